"""Training a character-level GPT that grows in depth: the growth callback and the training loop.

:class:`DepthGrowthCallback` is called after every optimizer step with ``(step, model, optimizer, loss)``.
It

1. snapshots the last block's weights every ``collect_interval_steps`` into a
   :class:`polyscale.growth.trajectory.TrajectoryWindow` of ``history_window_size``;
2. at each snapshot, feeds the mean training loss since the previous one, and the window's stretch factor
   ``tau`` and curvature ``kappa``, to the detector (*when*: :class:`polyscale.growth.StagnationDetector`
   or the plain :class:`polyscale.growth.LossPlateau`);
3. when the detector fires, builds the new block (*how*: :func:`polyscale.growth.depth_grower.new_block_state`),
   appends it with ``GPT.insert_layer`` and adds its parameters to the live optimizer
   (:func:`polyscale.training.optimizer_state.add_parameters`). The new parameters start with empty Adam
   state; every old one keeps its moments. The window restarts on the new last block.

It records every check (``tau``, ``kappa``, the loss) and every growth event, including the loss on a
fixed probe batch just before and just after the insertion (the *loss jump*).

:func:`train_lm` is the loop: AdamW with weight decay on matrices only, linear warm-up then cosine decay
of the learning rate (set on every parameter group at every step, so groups that gain parameters follow
the schedule), gradient clipping, and a validation loss every ``eval_interval`` steps on fixed batches.
It counts training FLOPs step by step at the depth each step ran with (``GPT.flops_per_token``). Every
step's loss and gradient norm are checked (:mod:`polyscale.training.divergence`): a step where either is
NaN or infinite is skipped (no update; the callbacks see its loss as NaN and leave it out of their means),
and more than ``max_bad_steps`` such steps in a row (0 by default) stop training with a
:class:`~polyscale.training.divergence.DivergenceError`, as do non-finite weights at a checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import trange

from polyscale.data.text import CharCorpus
from polyscale.growth.depth_grower import last_block_tensors, new_block_state
from polyscale.growth.depth_schedule import LossPlateau
from polyscale.growth.layer_state import LayerStateManager
from polyscale.growth.trajectory import GeometricExtrapolator, TrajectoryWindow
from polyscale.nn.gpt import GPT
from polyscale.training.checkpoint import (
    callback_state,
    clear_checkpoints,
    latest_checkpoint,
    load_training_state,
    prefixed,
    restore_callbacks,
    restore_rng,
    rng_tensors,
    save_training_state,
)
from polyscale.training.divergence import BadSteps, DivergenceError, non_finite, non_finite_weights
from polyscale.training.lr import warmup_cosine
from polyscale.training.optimizer_state import add_parameters, load_optimizer_state, optimizer_state_tensors
from polyscale.training.run_dir import check_same_settings

# called after every optimizer step with (step, model, optimizer, loss); what it returns is ignored
StepCallback = Callable[[int, GPT, torch.optim.Optimizer, float], object]


@dataclass
class GrowthEvent:
    """One insertion: the step after which it happened, the depth after it, the strategy, the probe loss
    just before and just after (their difference is the loss jump) and the geometry it was built from."""

    step: int
    n_layer: int
    strategy: str
    loss_before: float
    loss_after: float
    tau: float | None
    kappa: float | None
    details: dict = field(default_factory=dict)

    @property
    def jump(self) -> float:
        return self.loss_after - self.loss_before


class DepthGrowthCallback:
    """The callback of the module docstring."""

    def __init__(
        self,
        detector: LossPlateau,
        *,
        strategy: str = "geometric",
        extrapolator: GeometricExtrapolator | None = None,
        history_window_size: int = 15,
        collect_interval_steps: int = 100,
        max_layers: int | None = None,
        probe: tuple[Tensor, Tensor] | None = None,
        layer_states: LayerStateManager | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.detector, self.strategy = detector, strategy
        self.extrapolator = extrapolator if extrapolator is not None else GeometricExtrapolator()
        self.window = TrajectoryWindow(history_window_size, collect_interval_steps)
        self.max_layers, self.probe, self.layer_states, self.generator = (
            max_layers,
            probe,
            layer_states,
            generator,
        )
        self.events: list[GrowthEvent] = []
        self.checks: list[dict] = []  # step, loss, tau, kappa, n_layer at every snapshot
        self._loss_sum, self._loss_count = 0.0, 0

    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """``(tensors, json-able metadata)`` for a checkpoint: the detector, the window, the records."""
        tensors = {
            f"window.{i}.{k}": v for i, snap in enumerate(self.window.snapshots) for k, v in snap.items()
        }
        if self.generator is not None:
            tensors["generator"] = self.generator.get_state()
        meta = {
            "detector": asdict(self.detector), "window_steps": list(self.window.steps),
            "window_names": list(self.window.snapshots[0]) if self.window.snapshots else [],
            "events": [asdict(e) for e in self.events], "checks": self.checks,
            "loss_sum": self._loss_sum, "loss_count": self._loss_count,
        }  # fmt: skip
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict) -> None:
        for key, value in meta["detector"].items():
            setattr(self.detector, key, value)
        self.window.reset()
        for i, step in enumerate(meta["window_steps"]):
            self.window.add(step, {k: tensors[f"window.{i}.{k}"] for k in meta["window_names"]})
        if self.generator is not None and "generator" in tensors:
            self.generator.set_state(tensors["generator"])
        self.events = [GrowthEvent(**e) for e in meta["events"]]
        self.checks = list(meta["checks"])
        self._loss_sum, self._loss_count = float(meta["loss_sum"]), int(meta["loss_count"])

    def _probe_loss(self, model: GPT) -> float:
        if self.probe is None:
            raise ValueError("the probe loss needs the callback's probe batch (probe=(x, y))")
        x, y = self.probe
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, loss = model(x.to(model.wte.weight.device), y.to(model.wte.weight.device))
        model.train(was_training)
        return float(loss)

    def __call__(
        self, step: int, model: GPT, optimizer: torch.optim.Optimizer, loss: float
    ) -> GrowthEvent | None:
        """After optimizer step ``step`` (1-based count of steps done) with training loss ``loss`` (NaN or inf
        for a step the loop skipped: left out of the mean)."""
        if math.isfinite(loss):
            self._loss_sum, self._loss_count = self._loss_sum + loss, self._loss_count + 1
        if step % self.window.interval:  # not a snapshot step: nothing else to do
            return None
        self.window.add(step, last_block_tensors(model))
        if self._loss_count == 0:  # every step since the last check was skipped: nothing to decide on
            self.checks.append({"step": step, "loss": None, "tau": None, "kappa": None,
                                "n_layer": model.config.n_layer})  # fmt: skip
            return None
        mean_loss = self._loss_sum / self._loss_count
        self._loss_sum, self._loss_count = 0.0, 0
        geometry = self.window.layer_geometry()
        tau, kappa = geometry if geometry is not None else (None, None)
        self.checks.append({"step": step, "loss": mean_loss, "tau": tau, "kappa": kappa,
                            "n_layer": model.config.n_layer})  # fmt: skip
        if self.max_layers is not None and model.config.n_layer >= self.max_layers:
            return None
        if not self.detector.update(step, mean_loss, tau=tau, kappa=kappa):
            return None
        return self.grow(step, model, optimizer, tau=tau, kappa=kappa)

    def grow(
        self,
        step: int,
        model: GPT,
        optimizer: torch.optim.Optimizer,
        *,
        tau: float | None,
        kappa: float | None,
    ) -> GrowthEvent:
        """Insert one block now (what a detector firing does; callable directly for a fixed schedule)."""
        state, details = new_block_state(
            model, self.strategy, window=self.window, extrapolator=self.extrapolator, generator=self.generator
        )
        before = self._probe_loss(model) if self.probe is not None else math.nan
        index = model.config.n_layer
        params = model.insert_layer(index, state, generator=self.generator)
        add_parameters(optimizer, params)
        after = self._probe_loss(model) if self.probe is not None else math.nan
        if self.layer_states is not None:
            self.layer_states.save_state(index, "init", model.blocks[index].state_dict(), step)
            self.layer_states.save_state(index - 1, "at_growth", model.blocks[index - 1].state_dict(), step)
        self.window.reset()
        self.window.add(step, last_block_tensors(model))  # the new last block's first point
        event = GrowthEvent(step, model.config.n_layer, self.strategy, before, after, tau, kappa, details)
        self.events.append(event)
        return event


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay from ``lr`` to ``min_lr`` at ``max_steps``
    (the project's :func:`polyscale.training.lr.warmup_cosine`, in absolute terms)."""
    return lr * warmup_cosine(step, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr / lr)


def make_optimizer(
    model: GPT, *, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay on matrices (``ndim >= 2``), none on vectors (biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@torch.no_grad()
def evaluate(model: GPT, batches: Sequence[tuple[Tensor, Tensor]]) -> float:
    """Mean loss of ``model`` over ``batches`` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    device = model.wte.weight.device
    total = sum(float(model(x.to(device), y.to(device))[1]) for x, y in batches)
    model.train(was_training)
    return total / len(batches)


@dataclass
class LMRun:
    """What :func:`train_lm` reports: ``history`` has one row per evaluation (``step``, ``flops`` so far,
    ``train_loss``, ``val_loss``, ``n_layer``); ``flops`` is the training total."""

    history: list[dict]
    flops: float
    steps: int
    seconds: float


def train_lm(
    model: GPT,
    corpus: CharCorpus,
    *,
    max_steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    min_lr: float | None = None,
    warmup_steps: int = 100,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.99),
    grad_clip: float = 1.0,
    eval_interval: int = 250,
    eval_iters: int = 20,
    callbacks: Sequence[StepCallback] = (),
    seed: int = 0,
    progress: bool = True,
    output_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    settings: dict | None = None,
    max_bad_steps: int = 0,
) -> LMRun:
    """Train ``model`` in place on ``corpus`` (module docstring); ``min_lr`` defaults to ``lr / 10``.

    With ``output_dir``, everything a resumed run needs goes to ``output_dir/checkpoints/step_*`` every
    ``checkpoint_every`` steps and at the end, atomically, in the one checkpoint format
    (:mod:`polyscale.training.checkpoint`): the model (at its current depth), AdamW's state and group membership,
    the step, the FLOP count, the history, the random streams and the state of every callback that has
    ``state_dict`` / ``load_state_dict`` (:class:`DepthGrowthCallback` does). With ``resume`` a later call
    continues from it (the model passed in grows to the saved depth first) to the same result an
    uninterrupted run gives; ``settings`` (json-able) must then equal the saved ones.

    Raises:
        DivergenceError: more than ``max_bad_steps`` steps in a row had a NaN or infinite loss or gradient
            norm (each one skipped until then), or the weights were not finite at a checkpoint (which is then
            not written: the newest checkpoint on disk stays a finite one)."""
    if max_steps < 1 or batch_size < 1 or eval_interval < 1 or eval_iters < 1:
        raise ValueError(
            f"need max_steps, batch_size, eval_interval, eval_iters >= 1; got {max_steps}, {batch_size}, "
            f"{eval_interval}, {eval_iters}"
        )
    if not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if corpus.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the corpus has {corpus.vocab_size} characters, the model's vocabulary {model.config.vocab_size}"
        )
    start = time.perf_counter()
    device = model.wte.weight.device
    T = model.config.block_size
    min_lr = lr / 10 if min_lr is None else min_lr
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay, betas=betas)
    g_train = torch.Generator().manual_seed(seed)
    g_eval = torch.Generator().manual_seed(seed + 1)
    val_batches = [corpus.batch("val", batch_size, T, generator=g_eval) for _ in range(eval_iters)]
    train_batches = [corpus.batch("train", batch_size, T, generator=g_eval) for _ in range(eval_iters)]
    history: list[dict] = []
    flops, first = 0.0, 0
    checkpoint = None if output_dir is None else Path(output_dir)
    if checkpoint is not None and not resume:
        clear_checkpoints(checkpoint)  # a fresh start: no older, later step may outrank the new checkpoints
    bad = BadSteps(max_bad_steps)
    if checkpoint is not None and resume and (last := latest_checkpoint(checkpoint)) is not None:
        first, flops, history, optimizer, bad.count = _load_checkpoint(
            last, model, optimizer, g_train, callbacks, settings
        )
        first = min(first, max_steps)

    def diverged(step: int, what: str) -> DivergenceError:
        hint = f"lr={lr} is probably too high: lower it" + ("" if grad_clip > 0 else " or set grad_clip > 0")
        kept = None if checkpoint is None else latest_checkpoint(checkpoint)
        return DivergenceError(f"step {step}", what, hint=hint, checkpoint=kept, step=step)

    def record(step: int) -> None:
        history.append({"step": step, "flops": flops, "train_loss": evaluate(model, train_batches),
                        "val_loss": evaluate(model, val_batches), "n_layer": model.config.n_layer})  # fmt: skip

    model.train()
    if first == 0:
        record(0)
    bar = trange(
        first, max_steps, initial=first, total=max_steps, disable=not progress, desc="training", leave=False
    )
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=max_steps)
        x, y = corpus.batch("train", batch_size, T, generator=g_train)
        _, loss = model(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # the norm is computed (and checked) also without clipping: clipping at inf scales by exactly 1
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
        value, grad_norm = torch.stack([loss.detach().float(), norm.float()]).tolist()  # one sync for both
        problem = non_finite(value, grad_norm)
        if bad.record(problem):
            raise diverged(step + 1, bad.describe(problem))
        if problem:  # skipped: the gradients are dropped, the schedule and the callbacks go on
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
        flops += model.flops_per_token(T) * batch_size * T  # at the depth this step ran with
        for cb in callbacks:
            cb(step + 1, model, optimizer, value)
        if (step + 1) % eval_interval == 0 or step + 1 == max_steps:
            record(step + 1)
            bar.set_postfix(val=f"{history[-1]['val_loss']:.3f}", layers=model.config.n_layer)
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == max_steps):
            if what := non_finite_weights([("", model.named_parameters())]):
                raise diverged(step + 1, what)
            _save_checkpoint(
                checkpoint,
                model,
                optimizer,
                step + 1,
                flops,
                history,
                g_train,
                callbacks,
                settings,
                bad.count,
            )
    return LMRun(history, flops, max_steps, time.perf_counter() - start)


def _save_checkpoint(
    output_dir: Path, model, optimizer, step, flops, history, g_train, callbacks, settings, bad_steps
) -> None:
    """The training state in the one checkpoint format (:mod:`polyscale.training.checkpoint`); the tied head
    is stored once, as ``model.wte.weight``, and the optimizer's groups by parameter name."""
    names = {id(p): n for n, p in model.named_parameters()}  # the tied head appears once, as wte.weight
    tensors = {f"model.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tensors.update(optimizer_state_tensors(model, optimizer))
    tensors.update(rng_tensors({"train": g_train}))
    cb_tensors, cb_meta = callback_state(callbacks)
    groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    meta = {"config": asdict(model.config), "flops": flops, "history": history, "settings": settings,
            "groups": groups, "callbacks": cb_meta, "bad_steps": bad_steps}  # fmt: skip
    save_training_state(output_dir, step, tensors={**tensors, **cb_tensors}, meta=meta, keep=1)


def _load_checkpoint(path: Path, model, optimizer, g_train, callbacks, settings):
    tensors, meta = load_training_state(path)
    requested = settings or {}
    # keys the caller left out (those it lets change on resume) are not compared
    saved = {k: v for k, v in (meta["settings"] or {}).items() if k in requested}
    check_same_settings(saved, requested)
    saved_layers = meta["config"]["n_layer"]
    if model.config.n_layer > saved_layers:
        raise ValueError(f"the model has {model.config.n_layer} layers, the checkpoint only {saved_layers}")
    while model.config.n_layer < saved_layers:
        model.insert_layer(model.config.n_layer)  # its weights are loaded just below
    missing, unexpected = model.load_state_dict(prefixed(tensors, "model"), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"{path} does not fit the model: missing {missing}, unexpected {unexpected}")
    params = dict(model.named_parameters())
    for group, group_names in zip(optimizer.param_groups, meta["groups"], strict=True):
        group["params"] = [params[n] for n in group_names]
    optimizer.state.clear()
    load_optimizer_state(model, optimizer, tensors)
    restore_rng(tensors, {"train": g_train})
    restore_callbacks(callbacks, tensors, meta["callbacks"])
    return meta["step"], meta["flops"], meta["history"], optimizer, int(meta.get("bad_steps", 0))
