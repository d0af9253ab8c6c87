"""``polyscale grow sparse``: train a sparse classifier that grows from ~0.01 % connectivity.

Data (offline, procedural or shipped): ``mnist1d`` (the benchmark's 4,000 training / 1,000 test signals of
length 40; the last 400 training signals are the validation set) or ``digits`` (scikit-learn's 1,797 8x8
images, 64 features; a seeded 70 / 10 / 20 % train / validation / test split).

The run directory has the one layout of :mod:`polyscale.training.run_dir`: ``config.yaml`` (the
:class:`GrowSparseConfig`), ``checkpoints/``, ``model/`` (the final network as a model directory:
``SparseMLP.from_pretrained(run_dir)``), ``history.jsonl`` (one line of statistics per epoch),
``summary.json`` (test accuracy of the final network, of the best snapshot and of the snapshot ensemble,
growth events, connectivity, compression ratio), plus ``snapshots.safetensors`` (every snapshot, as deltas;
:class:`polyscale.growth.snapshots.SnapshotStore`).

Runs resume. Every ``checkpoint_every`` epochs (10) the trainer's whole state, the snapshots and the history
go to ``checkpoints/step_<epoch>`` in the one checkpoint format (:mod:`polyscale.training.checkpoint`). A
later call with the same settings continues from there (``resume=False`` starts over); a run asked for more
epochs continues to the new total. Other settings that differ from the saved run's are an error naming
each (old -> new).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from polyscale.config import to_dict
from polyscale.data import CLASSIFICATION_DATASETS
from polyscale.data.classification import Split
from polyscale.devices import resolve_device
from polyscale.growth import SparseGrowthSchedule
from polyscale.growth.snapshots import SnapshotStore, ensemble_probabilities
from polyscale.growth.sparse_grower import SparseGrower
from polyscale.nn.sparse_mlp import SparseMLP
from polyscale.pipelines.grow_config import GrowSparseConfig
from polyscale.pipelines.preflight import check_memory
from polyscale.training.checkpoint import load_training_state, save_training_state
from polyscale.training.run_dir import MODEL, open_run, write_history, write_summary
from polyscale.training.sparse_growth import SparseGrowthTrainer, accuracy

RESUMABLE = (
    "epochs",
    "device",
    "progress",
    "checkpoint_every",
    "max_bad_steps",
)  # may change when a run resumes
# may change on resume when asked (--allow-change KEY): the trainer's constant rate, which a resumed run's
# optimizer takes from the settings (the checkpoint holds only the moments)
CHANGEABLE = ("lr",)
ENSEMBLE_SIZE = 5  # snapshots in the reported ensemble: the best ones by validation accuracy


def classification_data(dataset: str, *, seed: int = 0) -> tuple[Split, Split, Split]:
    """``(train, val, test)``, each ``(x (N, features) float32, y (N,) long)``: the loader of
    :data:`polyscale.data.CLASSIFICATION_DATASETS` called ``dataset`` (module docstring)."""
    return CLASSIFICATION_DATASETS.lookup(dataset)(seed)


def grow_sparse(
    cfg: GrowSparseConfig | None = None,
    output_dir: str | Path | None = None,
    *,
    resume: bool = True,
    allow_change: tuple[str, ...] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Train a growing sparse network; returns the summary (also written to ``output_dir/summary.json``).

    ``cfg`` (default :class:`GrowSparseConfig()`) holds every setting: ``connectivity`` is the initial share
    of possible connections present (default 1e-4 = 0.01 %), before the per-unit minima of one input and one
    output (``polyscale.nn.sparse``); ``schedule`` and ``grower`` override further fields of
    :class:`SparseGrowthSchedule` and :class:`SparseGrower`. Without ``output_dir`` nothing is written.
    Build ``cfg`` from a preset and ``key=value`` overrides with
    :func:`polyscale.pipelines.grow_config.load_grow_sparse_config`. The run directory is entered (checked,
    locked, resumed or started afresh) before any training: :func:`~polyscale.training.run_dir.open_run`.
    """
    cfg = cfg if cfg is not None else GrowSparseConfig()
    cfg.validate()
    check_memory(sparse_memory_estimate(cfg), what=f"grow sparse (hidden sizes {list(cfg.hidden_sizes)})",
                 device=resolve_device(cfg.device), force=force)  # fmt: skip
    if output_dir is None:
        return _grow_sparse(cfg, None, None)
    with open_run(output_dir, to_dict(cfg), resume=resume, ignore=RESUMABLE, allow_change=allow_change,
                  changeable=CHANGEABLE, command="grow sparse") as run:  # fmt: skip
        return _grow_sparse(cfg, run.path, run.checkpoint)


def sparse_memory_estimate(cfg: GrowSparseConfig, in_features: int = 40, classes: int = 10) -> int:
    """Rough peak bytes of a sparse growth run: every block can hold a dense ``out x in`` float matrix (the
    masked forward), its gradient and the growth scores, plus a boolean mask; a batch's activations on top.
    Counted for the blocks between consecutive layers and the skip blocks (``cfg.skip`` layers back)."""
    sizes = [in_features, *cfg.hidden_sizes, classes]
    dense = sum(
        sizes[src] * sizes[dst]
        for dst in range(1, len(sizes))
        for src in range(max(0, dst - 1 - min(cfg.skip, len(cfg.hidden_sizes))), dst)
    )
    return dense * 13 + cfg.batch_size * sum(sizes) * 4 * 4


def _grow_sparse(cfg: GrowSparseConfig, out: Path | None, last: Path | None) -> dict[str, Any]:
    train, val, test = classification_data(cfg.dataset, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    net = SparseMLP(
        train[0].shape[1], list(cfg.hidden_sizes), 10, activation=cfg.activation,
        skip=min(cfg.skip, len(cfg.hidden_sizes)), density=cfg.connectivity,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    start = net.connectivity_stats()
    grower = {"structure_size": cfg.structure_size, "rank": cfg.rank, "fill": cfg.fill, **cfg.grower}
    trainer = SparseGrowthTrainer(
        net, train, val, lr=cfg.lr, batch_size=cfg.batch_size,
        schedule=SparseGrowthSchedule(**{"max_epochs": cfg.epochs, **cfg.schedule}),
        grower=SparseGrower(**grower), regrowth=cfg.regrowth, total_epochs=cfg.epochs,
        device=resolve_device(cfg.device), seed=cfg.seed, max_bad_steps=cfg.max_bad_steps, output_dir=out,
    )  # fmt: skip
    history: list[dict] = []
    if last is not None:
        history = _resume(trainer, last, cfg.epochs)

    def after_epoch(stats: dict) -> None:
        history.append(stats)
        if out is not None and (trainer.epoch % cfg.checkpoint_every == 0 or trainer.epoch == cfg.epochs):
            _save_checkpoint(trainer, out, history)

    try:
        trainer.fit(max(0, cfg.epochs - trainer.epoch), progress=cfg.progress, after_epoch=after_epoch)
    except BaseException:
        if out is not None and history:  # diverged or interrupted: the epochs done stay readable
            write_history(out, history)
        raise
    summary = _summary(cfg, trainer, history, test, start)
    if out is not None:
        trainer.net.save_pretrained(out / MODEL, metadata={"dataset": cfg.dataset, "epochs": cfg.epochs})
        _store(trainer).save(out / "snapshots.safetensors")
        write_history(out, history)
        write_summary(out, summary)
    return summary


def _store(trainer: SparseGrowthTrainer) -> SnapshotStore:
    """The trainer's snapshot store; a growth run always keeps one (``snapshots=True``)."""
    if trainer.store is None:
        raise ValueError("grow_sparse needs a trainer that keeps snapshots (snapshots=True)")
    return trainer.store


def _summary(
    cfg: GrowSparseConfig,
    trainer: SparseGrowthTrainer,
    history: list[dict],
    test: Split,
    start: dict[str, Any],
) -> dict[str, Any]:
    """Test accuracy of the final network, the best snapshot and the snapshot ensemble, and growth counts."""
    store = _store(trainer)
    phase = trainer.schedule.phase if trainer.schedule is not None else "static"
    store.add(
        trainer.net, epoch=trainer.epoch, phase=phase, reason="final", metric=history[-1]["val_accuracy"]
    )
    x_test, y_test = (t.to(trainer.device) for t in test)
    best = store.best()
    scored = [(i.metric, i) for i in store.infos if i.metric is not None]
    chosen = [i for _, i in sorted(scored, key=lambda pair: pair[0], reverse=True)[:ENSEMBLE_SIZE]]
    members: list[torch.nn.Module] = [store.model(i.index).to(trainer.device) for i in chosen]
    probs = ensemble_probabilities(members, x_test)
    end = trainer.net.connectivity_stats()
    return {
        "dataset": cfg.dataset,
        "test_accuracy": accuracy(trainer.net, x_test, y_test),
        "best_snapshot": best,
        "best_snapshot_test_accuracy": accuracy(store.model(best).to(trainer.device), x_test, y_test),
        "ensemble_snapshots": [i.index for i in chosen],
        "ensemble_test_accuracy": float((probs.argmax(-1) == y_test).double().mean()),
        "initial_connectivity": start["ratio"],
        "final_connectivity": end["ratio"],
        "final_connections": end["active"],
        "final_sizes": trainer.net.sizes,
        "growth_events": trainer.growth_events,
        "connections_added": trainer.connections_added,
        "clones": trainer.clones,
        "snapshots": len(store),
        "snapshots_by_phase": store.by_phase(),
        "snapshot_compression_ratio": store.compression_ratio,
        "epochs": cfg.epochs,
    }


def _save_checkpoint(trainer: SparseGrowthTrainer, out: Path, history: list[dict]) -> None:
    """The trainer's state (:meth:`SparseGrowthTrainer.state_dict`), the history and the snapshots."""
    tensors, meta = trainer.state_dict()
    store = _store(trainer)

    def save_snapshots(directory: Path) -> None:
        store.save(directory / "snapshots.safetensors")

    save_training_state(out, trainer.epoch, tensors=tensors, meta={"trainer": meta, "history": history}, keep=1,
                        extra=save_snapshots)  # fmt: skip


def _resume(trainer: SparseGrowthTrainer, checkpoint: Path, epochs: int) -> list[dict]:
    tensors, meta = load_training_state(checkpoint)
    trainer.load_state_dict(tensors, meta["trainer"])
    trainer.store = SnapshotStore.load(checkpoint / "snapshots.safetensors")
    if trainer.schedule is not None:
        trainer.schedule.max_epochs = epochs
    return meta["history"][: trainer.epoch]


def load_grown(directory: str | Path) -> SparseMLP:
    """The final network of a ``polyscale grow sparse`` run directory (``SparseMLP.from_pretrained``)."""
    return SparseMLP.from_pretrained(directory)
