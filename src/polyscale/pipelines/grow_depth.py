"""``polyscale grow depth``: train a character-level GPT that starts shallow and inserts layers when training
stagnates.

Data: any UTF-8 text file (``dataset_path``), or the Shakespeare corpus shipped in the package
(:mod:`polyscale.data.text`); 90 / 10 train / validation split, one token per character.

When: a :class:`polyscale.growth.StagnationDetector` (``detector="stagnation"``, the default: a loss
plateau of ``pg_patience`` checks below a ``pg_threshold`` relative gain, confirmed by ``tau > tau_crit`` or
``kappa > kappa_crit``) or the plain :class:`polyscale.growth.LossPlateau` (``detector="plateau"``). A
check happens every ``collect_interval`` steps, after ``warmup_steps`` (and again that many steps after
each growth). How: ``strategy`` (``geometric`` by default; ``copy``, ``zero``, ``random``), see
:mod:`polyscale.growth.depth_grower`. Growth stops at ``max_layers``.

The run directory has the one layout of :mod:`polyscale.training.run_dir`: ``config.yaml`` (the
:class:`GrowDepthConfig`), ``checkpoints/``, ``model/`` (the final model as a model directory, its vocabulary
in the metadata: :func:`load_grown_gpt`), ``history.jsonl`` (validation and training loss, FLOPs and depth
at every evaluation), ``growth.json`` (every insertion with its loss jump, and ``tau`` / ``kappa`` at every
check), ``layers/`` (each inserted block's initial state and the block it was extrapolated from,
:class:`LayerStateManager`), ``sample.txt`` (500 generated characters) and ``summary.json``.
Every file is written atomically.

Runs resume: every ``checkpoint_every`` steps (500) and at the end, the whole training state (model at its
current depth, AdamW moments, detector, trajectory window, random streams, history) goes to
``checkpoints/step_*`` (:mod:`polyscale.training.checkpoint`). Rerunning the same command continues from
there to the result an uninterrupted run gives; a rerun with other settings is refused naming each (old ->
new; ``resume=False`` starts over). The learning-rate schedule depends on ``max_steps``, so it is one of
those settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from polyscale.atomic import atomic_write_text
from polyscale.config import to_dict
from polyscale.data.text import CharCorpus
from polyscale.devices import resolve_device
from polyscale.growth import DETECTORS, GeometricExtrapolator, make_detector
from polyscale.growth.depth_grower import STRATEGIES
from polyscale.growth.layer_state import LayerStateManager
from polyscale.io import read_model_dir, resolve_model_dir
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.pipelines.grow_config import GrowDepthConfig
from polyscale.pipelines.preflight import check_memory
from polyscale.training.depth_growth import DepthGrowthCallback, train_lm
from polyscale.training.run_dir import MODEL, OWNED, open_run, write_history, write_summary

RESUMABLE = ("device", "progress", "checkpoint_every", "max_bad_steps")  # may change when a run resumes
# may change on resume when asked (--allow-change KEY): the learning-rate schedule follows the new values
CHANGEABLE = ("max_steps", "lr")
WRITES = (*OWNED, "layers", "growth.json", "sample.txt")  # what a run writes at the top of its directory


def grow_depth(
    cfg: GrowDepthConfig | None = None,
    output_dir: str | Path | None = None,
    *,
    resume: bool = True,
    allow_change: tuple[str, ...] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Train a growing GPT (module docstring); returns the summary (also ``output_dir/summary.json``).

    ``cfg`` (default :class:`GrowDepthConfig()`) holds every setting; without ``output_dir`` nothing is
    written. Build ``cfg`` from a preset and ``key=value`` overrides with
    :func:`polyscale.pipelines.grow_config.load_grow_depth_config`. The run directory is entered (checked,
    locked, resumed or started afresh) before any training: :func:`~polyscale.training.run_dir.open_run`."""
    cfg = cfg if cfg is not None else GrowDepthConfig()
    cfg.validate()
    STRATEGIES.lookup(cfg.strategy)
    DETECTORS.lookup(cfg.detector)
    corpus = CharCorpus.from_file(cfg.dataset_path)
    what = f"grow depth (up to {max(cfg.max_layers, cfg.n_layer)} layers of width {cfg.n_embd})"
    check_memory(depth_memory_estimate(cfg, corpus.vocab_size), what=what, device=resolve_device(cfg.device),
                 force=force)  # fmt: skip
    if output_dir is None:
        return _grow_depth(cfg, corpus, None, resume=resume)
    with open_run(output_dir, to_dict(cfg), resume=resume, ignore=RESUMABLE, allow_change=allow_change,
                  changeable=CHANGEABLE, command="grow depth", names=WRITES) as run:  # fmt: skip
        if run.checkpoint is None:
            _clear_layer_states(run.path / "layers")  # a fresh run: no layer states of an earlier one stay
        return _grow_depth(cfg, corpus, run.path, resume=resume)


def depth_memory_estimate(cfg: GrowDepthConfig, vocab_size: int) -> int:
    """Rough peak bytes of a depth growth run at its largest (``max_layers``): weights, gradients and AdamW's
    two moments (16 bytes per parameter, ``12 n_embd^2`` per layer plus the embeddings), the activations of a
    batch (about 24 values of ``n_embd`` per token and layer, and the attention maps), and the trajectory
    history the growth detector keeps (``history_window`` copies of the weights)."""
    layers = max(cfg.max_layers, cfg.n_layer)
    params = layers * 12 * cfg.n_embd**2 + (vocab_size + cfg.block_size) * cfg.n_embd
    tokens = cfg.batch_size * cfg.block_size
    activations = tokens * layers * (24 * cfg.n_embd + cfg.n_head * cfg.block_size) * 4
    return params * 4 * (4 + cfg.history_window) + activations


def _grow_depth(
    cfg: GrowDepthConfig, corpus: CharCorpus, out: Path | None, *, resume: bool
) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    dev = resolve_device(cfg.device)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd)).to(dev)  # fmt: skip
    # what the checkpoint must match; open_run has already checked the keys a resumed run may change
    settings = {k: v for k, v in to_dict(cfg).items() if k not in (*RESUMABLE, *CHANGEABLE)}
    callback = _callback(cfg, corpus, out)
    run = train_lm(model, corpus, max_steps=cfg.max_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                   eval_interval=cfg.eval_interval, callbacks=[callback], seed=cfg.seed, progress=cfg.progress,
                   output_dir=out, checkpoint_every=cfg.checkpoint_every, resume=resume,
                   settings=settings, max_bad_steps=cfg.max_bad_steps)  # fmt: skip
    prompt = corpus.encode(corpus.chars[0] if "\n" not in corpus.chars else "\n")[None].to(dev)
    sample = corpus.decode(
        model.eval().generate(prompt, 500, generator=torch.Generator(dev).manual_seed(cfg.seed))[0]
    )
    events = [{**asdict(e), "jump": e.jump} for e in callback.events]
    summary = {
        "final_val_loss": run.history[-1]["val_loss"], "final_train_loss": run.history[-1]["train_loss"],
        "initial_layers": cfg.n_layer, "final_layers": model.config.n_layer, "growth_events": len(events),
        "insertion_steps": [e["step"] for e in events], "loss_jumps": [e["jump"] for e in events],
        "training_flops": run.flops, "steps": run.steps, "seconds": run.seconds, "strategy": cfg.strategy,
        "detector": cfg.detector, "device": str(dev),
    }  # fmt: skip
    if out is not None:
        _write_run(out, model, corpus, run.history, events, callback.checks, summary, sample)
    summary["sample"] = sample
    return summary


def _callback(cfg: GrowDepthConfig, corpus: CharCorpus, out: Path | None) -> DepthGrowthCallback:
    """The growth callback of ``cfg``: its detector, extrapolator, probe batch and layer-state store."""
    when = make_detector(cfg.detector, warmup_steps=cfg.warmup_steps, patience=cfg.pg_patience,
                         threshold=cfg.pg_threshold, tau_crit=cfg.tau_crit, kappa_crit=cfg.kappa_crit)  # fmt: skip
    extrapolator = GeometricExtrapolator(beta0=cfg.beta0, gamma0=cfg.gamma0, eta0=cfg.eta0,
                                         k_subspace=cfg.k_subspace, ell_orth=cfg.ell_orth, tau_crit=cfg.tau_crit,
                                         kappa_crit=cfg.kappa_crit)  # fmt: skip
    probe = corpus.batch("train", 64, cfg.block_size, generator=torch.Generator().manual_seed(cfg.seed + 2))
    return DepthGrowthCallback(
        when, strategy=cfg.strategy, extrapolator=extrapolator, history_window_size=cfg.history_window,
        collect_interval_steps=cfg.collect_interval, max_layers=cfg.max_layers, probe=probe,
        layer_states=None if out is None else LayerStateManager(out / "layers"),
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip


def _clear_layer_states(directory: Path) -> None:
    """Remove what :class:`LayerStateManager` wrote in ``directory`` (its index and ``layer_*`` files)."""
    if not (directory / "index.json").is_file():
        return
    for entry in LayerStateManager(directory).states():
        (directory / entry["file"]).unlink(missing_ok=True)
    (directory / "index.json").unlink()


def _write_run(out: Path, model: GPT, corpus: CharCorpus, history, events, checks, summary, sample) -> None:
    model.save_pretrained(out / MODEL, metadata={"chars": corpus.chars})
    write_history(out, history)
    atomic_write_text(out / "growth.json", json.dumps({"events": events, "checks": checks}, indent=1) + "\n")
    write_summary(out, summary)
    atomic_write_text(out / "sample.txt", sample + "\n")


def load_grown_gpt(directory: str | Path) -> tuple[GPT, list[str]]:
    """The final model of a ``polyscale grow depth`` run (or its ``model/`` directory) and its vocabulary."""
    model_dir = resolve_model_dir(directory, kind="GPT")
    return GPT.from_pretrained(model_dir), list(read_model_dir(model_dir).metadata["chars"])
