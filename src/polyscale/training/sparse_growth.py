"""Training a sparse network that grows: the epoch loop joining schedule, grower, optimizer and
snapshots.

:class:`SparseGrowthTrainer` trains a :class:`polyscale.nn.sparse_mlp.SparseMLP` classifier with Adam and
cross-entropy. After every epoch it

1. measures each block's gradient variance over the epoch (the variance of the block's mean gradient) and
   feeds it to the :class:`polyscale.growth.SparseGrowthSchedule` (*when*);
2. finds the activation extrema on a fixed probe batch of training inputs (reported every epoch; when
   none are left the schedule stops growing);
3. on a growth decision, snapshots the network as it stands, lets the
   :class:`polyscale.growth.SparseGrower` add connections and clones (*how*), and carries Adam's state
   over (old entries keep their moments, new ones start at zero);
4. snapshots the network whenever validation accuracy beats the last improvement snapshot's by more than
   ``improvement`` (2 %, relative).

The same loop runs the baselines: no schedule is a static sparse (or dense) network, and
``regrowth="set"`` / ``"rigl"`` prunes and regrows a cosine-decayed fraction of every block after every
epoch, at fixed connectivity (:mod:`polyscale.growth.regrowth`).

Every step's loss and gradients are checked (:mod:`polyscale.training.divergence`): a step where either is
NaN or infinite is skipped (no update; it counts neither in the epoch's loss nor in the gradient variance),
and more than ``max_bad_steps`` of them in a row (0 by default) stop training with a
:class:`~polyscale.training.divergence.DivergenceError`, as does a network whose weights are not finite when
:meth:`SparseGrowthTrainer.state_dict` is asked for a checkpoint.

Growth and regrowth also combine (opt-in): with a schedule *and* ``regrowth``, every epoch that does not
grow prunes and regrows at the connectivity reached so far, so the grown structure keeps exploring between
and after growth events. A grower that places connections by gradient (``SparseGrower(rank="gradient")``
or ``fill="gradient"``) gets the dense gradient of a random training batch of at least 512 examples, the
same batch size RigL's regrowth uses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import trange

from polyscale.config import to_dict
from polyscale.growth.regrowth import METHODS, cosine_fraction, dense_gradients, prune_and_regrow
from polyscale.growth.snapshots import SnapshotStore
from polyscale.growth.sparse_grower import SparseGrower, layer_extrema
from polyscale.growth.sparse_schedule import SparseGrowthSchedule
from polyscale.io import model_from_state
from polyscale.nn.sparse_mlp import SparseMLP
from polyscale.training.checkpoint import latest_checkpoint
from polyscale.training.divergence import BadSteps, DivergenceError, non_finite, non_finite_weights
from polyscale.training.optimizer_state import apply_changes, load_optimizer_state, optimizer_state_tensors


def accuracy(net: torch.nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> float:
    """Share of ``x (N, F)`` whose argmax logit is ``y (N,)``."""
    with torch.no_grad():
        hits = sum(
            int((net(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
            for i in range(0, len(x), batch_size)
        )
    return hits / max(len(x), 1)


class SparseGrowthTrainer:
    """The loop of the module docstring. ``train`` and ``val`` are ``(x (N, F), y (N,))`` tensor pairs.

    ``max_bad_steps``: steps in a row with a NaN or infinite loss or gradient that are skipped before a
    :class:`~polyscale.training.divergence.DivergenceError` stops training (0: stop at the first).
    ``output_dir``: the run directory whose ``checkpoints/`` the caller writes, named in that error as where
    the last good checkpoint is (None: the error names none)."""

    def __init__(
        self,
        net: SparseMLP,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        *,
        lr: float = 1e-2,
        batch_size: int = 100,
        schedule: SparseGrowthSchedule | None = None,
        grower: SparseGrower | None = None,
        regrowth: str | None = None,
        regrowth_fraction: float = 0.3,
        total_epochs: int = 100,
        snapshots: bool = True,
        improvement: float = 0.02,
        probe_size: int = 512,
        device: str | torch.device = "cpu",
        seed: int = 0,
        max_bad_steps: int = 0,
        output_dir: str | Path | None = None,
    ) -> None:
        if regrowth is not None and regrowth not in METHODS:
            raise ValueError(f"regrowth must be None or one of {METHODS}, got {regrowth!r}")
        for name, (x, y) in (("train", train), ("val", val)):
            if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
                raise ValueError(
                    f"{name} must be (x (N, features), y (N,)) with N > 0, got {tuple(x.shape)}, {tuple(y.shape)}"
                )
            if x.shape[1] != net.sizes[0]:
                raise ValueError(f"{name} has {x.shape[1]} features, the network takes {net.sizes[0]}")
        if not (0 < lr < math.inf) or batch_size < 1 or not (0 <= improvement < math.inf):
            raise ValueError(
                f"need a finite lr > 0, batch_size >= 1, a finite improvement >= 0; got {lr}, {batch_size}, "
                f"{improvement}"
            )
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.train_x, self.train_y = (t.to(self.device) for t in train)
        self.val_x, self.val_y = (t.to(self.device) for t in val)
        self.lr, self.batch_size = lr, batch_size
        self.schedule = schedule
        self.grower = grower if grower is not None else (SparseGrower() if schedule is not None else None)
        self.regrowth, self.regrowth_fraction, self.total_epochs = regrowth, regrowth_fraction, total_epochs
        self.store = SnapshotStore() if snapshots else None
        self.improvement = improvement
        self.generator = torch.Generator().manual_seed(seed)
        self.probe = self.train_x[torch.randperm(len(self.train_x), generator=self.generator)[:probe_size]]
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.epoch = 0
        self.reference = 0.0  # validation accuracy of the last improvement snapshot
        self.growth_events = 0
        self.connections_added = 0
        self.clones = 0
        self.bad = BadSteps(max_bad_steps)
        self.output_dir = None if output_dir is None else Path(output_dir)

    def _diverged(self, where: str, what: str, step: int) -> DivergenceError:
        known = self.output_dir is not None  # else the caller keeps the checkpoints: name none of them
        checkpoint = latest_checkpoint(self.output_dir) if self.output_dir is not None else None
        hint = f"lr={self.lr} is probably too high: lower it"
        return DivergenceError(
            where, what, hint=hint, checkpoint=checkpoint, step=step, checkpoints_known=known
        )

    def train_epoch(self) -> dict:
        """One epoch of training, then the growth (or regrowth) step; returns the epoch's statistics:
        ``loss``, ``train_accuracy``, ``val_accuracy``, ``grew``, ``connections_added`` (this epoch),
        ``clones``, ``connectivity`` (overall ratio) and ``active``, ``high_extrema`` / ``low_extrema``
        (counts over the hidden layers), ``phase``, ``spikes``, ``credits``, ``snapshots`` (stored so far),
        ``growth_done`` (why growth ended, if it has) and ``seconds``. The accuracies are those of the network
        the epoch trained (before the epoch's surgery); ``connectivity`` and ``active`` are after it. An epoch
        that both grows and improves stores one snapshot, reason ``"growth"``."""
        start = time.perf_counter()
        self.net.train()
        n = len(self.train_x)
        order = torch.randperm(n, generator=self.generator).to(self.device)
        blocks = self.net.sparse_blocks()
        grad_sum = {name: torch.zeros_like(b.values) for name, b in blocks.items()}
        total_loss, batches = 0.0, 0  # over the steps taken (skipped bad steps do not count)
        per_epoch = -(-n // self.batch_size)
        for b, i in enumerate(range(0, n, self.batch_size)):
            idx = order[i : i + self.batch_size]
            loss = F.cross_entropy(self.net(self.train_x[idx]), self.train_y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            value, grad_total = self._loss_and_gradient_sum(loss)  # one sync: finite or not
            problem = non_finite(value, grad_total, grad_label="sum of the gradients")
            if self.bad.record(problem):
                step = self.epoch * per_epoch + b + 1
                where = f"step {step} (epoch {self.epoch + 1}, batch {b + 1} of {per_epoch})"
                raise self._diverged(where, self.bad.describe(problem), step)
            if problem:  # skipped: no update, no contribution to the epoch's statistics
                self.optimizer.zero_grad(set_to_none=True)
                continue
            for name, block in blocks.items():
                if block.values.grad is not None:
                    grad_sum[name] += block.values.grad
            self.optimizer.step()
            total_loss, batches = total_loss + value, batches + 1
        self.epoch += 1
        self.net.eval()
        variances = {
            name: float((g / max(batches, 1)).double().var())
            for name, g in grad_sum.items()
            if g.numel() >= 2
        }
        high, low = (self.grower.extrema if self.grower is not None else layer_extrema)(self.net, self.probe)
        n_high, n_low = sum(len(v) for v in high.values()), sum(len(v) for v in low.values())
        stats: dict[str, Any] = {
            "epoch": self.epoch, "loss": total_loss / batches if batches else math.nan, "grew": False,
            "connections_added": 0, "clones": 0, "high_extrema": n_high, "low_extrema": n_low, "phase": None,
            "spikes": 0, "credits": None, "growth_done": None,
        }  # fmt: skip
        # accuracies and snapshots describe the network this epoch trained, before any surgery
        val_acc = accuracy(self.net, self.val_x, self.val_y)
        stats.update(train_accuracy=accuracy(self.net, self.train_x, self.train_y), val_accuracy=val_acc)
        improved = val_acc > self.reference * (1 + self.improvement)
        if improved:
            self.reference = val_acc
        decision = (
            None if self.schedule is None else self.schedule.update(variances, no_extrema=n_high + n_low == 0)
        )
        if improved and not (decision is not None and decision.grow):
            self._snapshot("improvement", val_acc)
        if self.schedule is not None and decision is not None:
            stats.update(phase=decision.phase, spikes=len(decision.spikes), growth_done=decision.done)
            if decision.grow:
                if self.grower is None:
                    raise ValueError("a trainer with a schedule needs a grower")
                self._snapshot("growth", val_acc)  # also stands for an improvement in the same epoch
                result = self.grower.grow(
                    self.net, self.probe, decision.allowance, generator=self.generator,
                    gradients=lambda net: self._dense_gradients(),
                )  # fmt: skip
                apply_changes(self.optimizer, result.changes)
                self.schedule.record_growth(result.structures)
                self.growth_events += 1
                self.connections_added += result.added
                self.clones += result.clones
                stats.update(grew=True, connections_added=result.added, clones=result.clones)
            stats["credits"] = self.schedule.credits
        if self.regrowth is not None and not stats["grew"]:
            fraction = cosine_fraction(self.epoch, self.total_epochs, self.regrowth_fraction)
            grads = self._dense_gradients() if METHODS[self.regrowth].needs_gradients else None
            changes = prune_and_regrow(
                self.net, fraction, self.regrowth, dense_grads=grads, generator=self.generator
            )
            apply_changes(self.optimizer, changes)
        connectivity = self.net.connectivity_stats()
        stats.update(
            connectivity=connectivity["ratio"],
            active=connectivity["active"],
            snapshots=0 if self.store is None else len(self.store),
            seconds=time.perf_counter() - start,
        )
        return stats

    def _loss_and_gradient_sum(self, loss: Tensor) -> tuple[float, float]:
        """The loss and the sum of every gradient entry (NaN or inf exactly when some entry is), read together."""
        grads = [p.grad.sum().double() for p in self.net.parameters() if p.grad is not None]
        total = torch.stack(grads).sum() if grads else loss.new_zeros((), dtype=torch.float64)
        value, grad_total = torch.stack([loss.detach().double(), total]).tolist()
        return value, grad_total

    def _dense_gradients(self) -> dict[str, Tensor]:
        """``dL/dW`` at every position of every block on a random batch of ``max(batch_size, 512)``."""
        idx = torch.randperm(len(self.train_x), generator=self.generator)[: max(self.batch_size, 512)]
        idx = idx.to(self.device)
        return dense_gradients(self.net, self.train_x[idx], self.train_y[idx], F.cross_entropy)

    def _snapshot(self, reason: str, metric: float) -> None:
        if self.store is not None:
            phase = self.schedule.phase if self.schedule is not None else "static"
            self.store.add(self.net, epoch=self.epoch, phase=phase, reason=reason, metric=metric)

    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """Everything a resumed run needs, as ``(tensors, json-able metadata)``: the network (structure
        included), Adam's state by parameter name, the schedule, the counters and the random stream. The
        snapshots are saved on their own (:meth:`SnapshotStore.save`).

        Raises:
            DivergenceError: a weight of the network is NaN or infinite (nothing of it should be saved)."""
        what = non_finite_weights([("", self.net.named_parameters())])
        if what:
            raise self._diverged(f"epoch {self.epoch}", what, self.epoch)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        tensors.update(optimizer_state_tensors(self.net, self.optimizer))
        tensors["rng.train"] = self.generator.get_state()
        meta = {
            "net_config": to_dict(self.net.config),
            "epoch": self.epoch,
            "reference": self.reference,
            "growth_events": self.growth_events,
            "connections_added": self.connections_added,
            "clones": self.clones,
            "bad_steps": self.bad.count,
            "schedule": None if self.schedule is None else asdict(self.schedule),
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Continue from :meth:`state_dict`'s output (the network and optimizer are rebuilt from it)."""
        net_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        net = model_from_state(SparseMLP, meta["net_config"], net_state)
        if not isinstance(net, SparseMLP):
            raise ValueError(f"the checkpoint holds a {type(net).__name__}, not a SparseMLP")
        self.net = net.to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        load_optimizer_state(self.net, self.optimizer, tensors)
        self.generator.set_state(tensors["rng.train"])
        self.epoch, self.reference = int(meta["epoch"]), float(meta["reference"])
        self.growth_events, self.connections_added = (
            int(meta["growth_events"]),
            int(meta["connections_added"]),
        )
        self.clones = int(meta["clones"])
        self.bad.count = int(meta.get("bad_steps", 0))
        if meta["schedule"] is not None:
            fields = dict(meta["schedule"])
            fields["phase_limits"] = tuple(fields["phase_limits"])
            self.schedule = SparseGrowthSchedule(**fields)

    def fit(
        self,
        epochs: int,
        *,
        progress: bool = True,
        after_epoch: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """``epochs`` more calls of :meth:`train_epoch` under a progress bar; ``after_epoch(stats)`` runs after
        each (a checkpoint, a log). Returns their statistics."""
        history = []
        bar = trange(
            self.epoch, self.epoch + epochs, initial=self.epoch, total=self.epoch + epochs,
            disable=not progress, desc="training", leave=False,
        )  # fmt: skip
        for _ in bar:
            stats = self.train_epoch()
            history.append(stats)
            bar.set_postfix(
                val=f"{stats['val_accuracy']:.3f}",
                conn=f"{stats['connectivity']:.2%}",
                grown=self.growth_events,
            )
            if after_epoch is not None:
                after_epoch(stats)
        return history
