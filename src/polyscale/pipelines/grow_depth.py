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

The run directory gets ``model.safetensors`` + ``config.json`` (the final model and its vocabulary),
``history.jsonl`` (validation and training loss, FLOPs and depth at every evaluation), ``growth.json``
(every insertion with its loss jump, and ``tau`` / ``kappa`` at every check), ``layers/`` (each inserted
block's initial state and the block it was extrapolated from, :class:`LayerStateManager`), ``sample.txt``
(500 generated characters) and ``summary.json``. Every file is written atomically.

Runs resume: every ``checkpoint_every`` steps (500) and at the end, the whole training state (model at its
current depth, AdamW moments, detector, trajectory window, random streams, history) goes to
``output_dir/checkpoint/``. Rerunning the same command continues from there to the result an uninterrupted
run gives; a rerun with other settings is refused with both named (``resume=False`` starts over). The
learning-rate schedule depends on ``max_steps``, so it is one of those settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from polyscale.data.text import CharCorpus
from polyscale.growth import GeometricExtrapolator, LossPlateau, StagnationDetector
from polyscale.growth.depth_grower import STRATEGIES
from polyscale.growth.layer_state import LayerStateManager
from polyscale.io import atomic_write_bytes, atomic_write_text, read_run_dir
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.pipelines.sample import resolve_device
from polyscale.training.depth_growth import DepthGrowthCallback, train_lm

DETECTORS = ("stagnation", "plateau")


def grow_depth(
    *,
    dataset_path: str | Path | None = None,
    n_layer: int = 1,
    n_head: int = 4,
    n_embd: int = 128,
    block_size: int = 64,
    max_layers: int = 4,
    max_steps: int = 2000,
    batch_size: int = 12,
    lr: float = 1e-3,
    strategy: str = "geometric",
    detector: str = "stagnation",
    beta0: float = 0.1,
    gamma0: float = 0.15,
    eta0: float = 0.03,
    k_subspace: int = 10,
    ell_orth: int = 5,
    pg_patience: int = 2,
    pg_threshold: float = 0.01,
    tau_crit: float = 2.0,
    kappa_crit: float = 0.5,
    warmup_steps: int = 200,
    history_window: int = 10,
    collect_interval: int = 50,
    eval_interval: int = 100,
    device: str = "auto",
    seed: int = 0,
    output_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = True,
    checkpoint_every: int = 500,
) -> dict:
    """Train a growing GPT (module docstring); returns the summary (also ``output_dir/summary.json``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if max_layers < n_layer:
        raise ValueError(f"max_layers ({max_layers}) must be at least n_layer ({n_layer})")
    corpus = CharCorpus.from_file(dataset_path)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd)).to(dev)  # fmt: skip
    plateau = dict(warmup_steps=warmup_steps, patience=pg_patience, threshold=pg_threshold)
    when = (
        StagnationDetector(**plateau, tau_crit=tau_crit, kappa_crit=kappa_crit)
        if detector == "stagnation"
        else LossPlateau(**plateau)
    )
    extrapolator = GeometricExtrapolator(beta0=beta0, gamma0=gamma0, eta0=eta0, k_subspace=k_subspace,
                                         ell_orth=ell_orth, tau_crit=tau_crit, kappa_crit=kappa_crit)  # fmt: skip
    out = None if output_dir is None else Path(output_dir)
    if out is not None and not (resume and (out / "checkpoint" / "state.json").is_file()):
        _clear_layer_states(out / "layers")  # a fresh run: no layer states of an earlier one stay behind
    callback = DepthGrowthCallback(
        when, strategy=strategy, extrapolator=extrapolator, history_window_size=history_window,
        collect_interval_steps=collect_interval, max_layers=max_layers,
        probe=corpus.batch("train", 64, block_size, generator=torch.Generator().manual_seed(seed + 2)),
        layer_states=None if out is None else LayerStateManager(out / "layers"),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    settings = {
        "dataset_path": None if dataset_path is None else str(dataset_path), "n_layer": n_layer, "n_head": n_head,
        "n_embd": n_embd, "block_size": block_size, "max_layers": max_layers, "batch_size": batch_size, "lr": lr,
        "strategy": strategy, "detector": detector, "beta0": beta0, "gamma0": gamma0, "eta0": eta0,
        "k_subspace": k_subspace, "ell_orth": ell_orth, "pg_patience": pg_patience, "pg_threshold": pg_threshold,
        "tau_crit": tau_crit, "kappa_crit": kappa_crit, "warmup_steps": warmup_steps,
        "history_window": history_window, "collect_interval": collect_interval, "eval_interval": eval_interval,
        "seed": seed, "max_steps": max_steps,
    }  # fmt: skip
    run = train_lm(model, corpus, max_steps=max_steps, batch_size=batch_size, lr=lr, eval_interval=eval_interval,
                   callbacks=[callback], seed=seed, progress=progress,
                   checkpoint_dir=None if out is None else out / "checkpoint", checkpoint_every=checkpoint_every,
                   resume=resume, settings=settings)  # fmt: skip
    prompt = corpus.encode(corpus.chars[0] if "\n" not in corpus.chars else "\n")[None].to(dev)
    sample = corpus.decode(
        model.eval().generate(prompt, 500, generator=torch.Generator(dev).manual_seed(seed))[0]
    )
    events = [{**asdict(e), "jump": e.jump} for e in callback.events]
    summary = {
        "final_val_loss": run.history[-1]["val_loss"], "final_train_loss": run.history[-1]["train_loss"],
        "initial_layers": n_layer, "final_layers": model.config.n_layer, "growth_events": len(events),
        "insertion_steps": [e["step"] for e in events], "loss_jumps": [e["jump"] for e in events],
        "training_flops": run.flops, "steps": run.steps, "seconds": run.seconds, "strategy": strategy,
        "detector": detector, "device": str(dev),
    }  # fmt: skip
    if out is not None:
        _write_run(out, model, corpus, run.history, events, callback.checks, summary, sample)
    summary["sample"] = sample
    return summary


def _clear_layer_states(directory: Path) -> None:
    """Remove what :class:`LayerStateManager` wrote in ``directory`` (its index and ``layer_*`` files)."""
    if not (directory / "index.json").is_file():
        return
    for entry in LayerStateManager(directory).states():
        (directory / entry["file"]).unlink(missing_ok=True)
    (directory / "index.json").unlink()


def _write_run(out: Path, model: GPT, corpus: CharCorpus, history, events, checks, summary, sample) -> None:
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    atomic_write_bytes(out / "model.safetensors", save(state))  # the head is tied to wte
    config = {"model": model.config_dict(), "chars": corpus.chars}
    atomic_write_text(out / "config.json", json.dumps(config, indent=1) + "\n")
    atomic_write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    atomic_write_text(out / "growth.json", json.dumps({"events": events, "checks": checks}, indent=1) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "sample.txt", sample + "\n")


def load_grown_gpt(directory: str | Path) -> tuple[GPT, list[str]]:
    """The final model of a ``polyscale grow depth`` run directory and its vocabulary."""
    config, state = read_run_dir(directory, "grow depth")
    return GPT.from_state(config["model"], state), config["chars"]
