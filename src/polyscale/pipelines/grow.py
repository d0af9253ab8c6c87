"""``polyscale grow sparse``: train a sparse classifier that grows from ~0.01 % connectivity.

Data (offline, procedural or shipped): ``mnist1d`` (the benchmark's 4,000 training / 1,000 test signals of
length 40; the last 400 training signals are the validation set) or ``digits`` (scikit-learn's 1,797 8x8
images, 64 features; a seeded 70 / 10 / 20 % train / validation / test split).

The run directory gets ``model.safetensors`` + ``config.json`` (the final network), ``snapshots.safetensors``
(every snapshot, as deltas; :class:`polyscale.growth.snapshots.SnapshotStore`), ``history.jsonl`` (one line
of statistics per epoch) and ``summary.json`` (test accuracy of the final network, of the best snapshot and
of the snapshot ensemble, growth events, connectivity, compression ratio).

Runs resume. Every ``checkpoint_every`` epochs (10) the trainer's whole state, the snapshots and the history
go to ``output_dir/checkpoint/``, written atomically (a new directory renamed into place). A later call with
the same settings continues from there (``resume=False`` starts over); a run asked for more epochs than it
has continues to the new total. Other settings that differ from the saved run's are an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from polyscale.growth import SparseGrowthSchedule
from polyscale.growth.snapshots import ensemble_probabilities
from polyscale.growth.sparse_grower import SparseGrower
from polyscale.io import atomic_write_bytes, atomic_write_text, read_run_dir
from polyscale.nn.sparse import SparseMLP
from polyscale.pipelines.sample import resolve_device
from polyscale.training.sparse_growth import SparseGrowthTrainer, accuracy

DATASETS = ("mnist1d", "digits")
ENSEMBLE_SIZE = 5  # snapshots in the reported ensemble: the best ones by validation accuracy

Split = tuple[Tensor, Tensor]


def classification_data(dataset: str, *, seed: int = 0) -> tuple[Split, Split, Split]:
    """``(train, val, test)``, each ``(x (N, features) float32, y (N,) long)`` (module docstring)."""
    if dataset == "mnist1d":
        from polyscale.data import mnist1d

        train, test = mnist1d(split="train", seed=0), mnist1d(split="test", seed=0)
        x, y = train.data.flatten(1), train.labels
        return (x[:3600], y[:3600]), (x[3600:], y[3600:]), (test.data.flatten(1), test.labels)
    if dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0 * 2 - 1  # 0..16 ink -> [-1, 1]
        y = torch.tensor(bunch.target, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        a, b = int(0.7 * len(x)), int(0.8 * len(x))
        pick = lambda idx: (x[idx], y[idx])  # noqa: E731
        return pick(order[:a]), pick(order[a:b]), pick(order[b:])
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def grow_sparse(
    *,
    dataset: str = "mnist1d",
    epochs: int = 100,
    sparsity: float = 1e-4,
    activation: str = "tanh",
    hidden_sizes: tuple[int, ...] | list[int] = (256, 256),
    skip: int = 1,
    lr: float = 1e-2,
    batch_size: int = 100,
    device: str = "auto",
    seed: int = 0,
    output_dir: str | Path | None = None,
    progress: bool = True,
    schedule: dict | None = None,
    grower: dict | None = None,
    regrowth: str | None = None,
    resume: bool = True,
    checkpoint_every: int = 10,
) -> dict:
    """Train a growing sparse network; returns the summary (also written to ``output_dir/summary.json``).

    ``sparsity`` is the initial connectivity, the share of possible connections present at the start
    (default 1e-4 = 0.01 %), before the per-unit minima of one input and one output (``polyscale.nn.sparse``).
    ``schedule`` and ``grower`` override fields of :class:`SparseGrowthSchedule` and :class:`SparseGrower`
    (e.g. ``{"phase_limits": (100, 500, 2000)}``); the defaults are the issue's numbers. ``regrowth``
    (``"set"`` or ``"rigl"``, default none) also prunes and regrows after every epoch that does not grow
    (:class:`SparseGrowthTrainer`)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0 < sparsity <= 1:
        raise ValueError(f"sparsity (the initial connectivity) must be in (0, 1], got {sparsity}")
    if not hidden_sizes or min(hidden_sizes) < 1:
        raise ValueError(f"hidden_sizes must be one or more positive widths, got {list(hidden_sizes)}")
    train, val, test = classification_data(dataset, seed=seed)
    torch.manual_seed(seed)
    net = SparseMLP(
        train[0].shape[1], list(hidden_sizes), 10, activation=activation, skip=min(skip, len(hidden_sizes)),
        density=sparsity, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    start = net.connectivity_stats()
    trainer = SparseGrowthTrainer(
        net, train, val, lr=lr, batch_size=batch_size,
        schedule=SparseGrowthSchedule(**{"max_epochs": epochs, **(schedule or {})}),
        grower=SparseGrower(**(grower or {})), regrowth=regrowth, total_epochs=epochs,
        device=resolve_device(device), seed=seed,
    )  # fmt: skip
    settings = {
        "dataset": dataset, "sparsity": sparsity, "activation": activation, "hidden_sizes": list(hidden_sizes),
        "skip": skip, "lr": lr, "batch_size": batch_size, "seed": seed, "schedule": _jsonable(schedule or {}),
        "grower": _jsonable(grower or {}), "regrowth": regrowth,
    }  # fmt: skip
    history: list[dict] = []
    checkpoint = None if output_dir is None else Path(output_dir) / "checkpoint"
    if checkpoint is not None and resume and checkpoint.is_dir():
        history = _resume(trainer, checkpoint, settings, epochs)

    def after_epoch(stats: dict) -> None:
        history.append(stats)
        if checkpoint is not None and (trainer.epoch % checkpoint_every == 0 or trainer.epoch == epochs):
            _save_checkpoint(trainer, checkpoint, settings, history)

    trainer.fit(max(0, epochs - trainer.epoch), progress=progress, after_epoch=after_epoch)
    store = trainer.store
    store.add(trainer.net, epoch=trainer.epoch, phase=trainer.schedule.phase, reason="final",
              metric=history[-1]["val_accuracy"])  # fmt: skip
    x_test, y_test = (t.to(trainer.device) for t in test)
    best = store.best()
    chosen = sorted((i for i in store.infos if i.metric is not None), key=lambda i: i.metric, reverse=True)[
        :ENSEMBLE_SIZE
    ]
    members = [store.model(i.index).to(trainer.device) for i in chosen]
    probs = ensemble_probabilities(members, x_test)
    end = trainer.net.connectivity_stats()
    summary = {
        "dataset": dataset,
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
        "epochs": epochs,
    }
    if output_dir is not None:
        _write_run(Path(output_dir), trainer, history, summary)
    return summary


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))  # tuples -> lists, so saved and given settings compare equal


def _save_checkpoint(
    trainer: SparseGrowthTrainer, checkpoint: Path, settings: dict, history: list[dict]
) -> None:
    from safetensors.torch import save_file

    from polyscale.io import atomic_replace_dir

    tensors, meta = trainer.state_dict()

    def build(tmp: Path) -> None:
        save_file(tensors, tmp / "trainer.safetensors")
        (tmp / "trainer.json").write_text(json.dumps({"settings": settings, "state": meta}, indent=1) + "\n")
        trainer.store.save(tmp / "snapshots.safetensors")
        (tmp / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))

    atomic_replace_dir(build, checkpoint)


def _resume(trainer: SparseGrowthTrainer, checkpoint: Path, settings: dict, epochs: int) -> list[dict]:
    from safetensors.torch import load_file

    from polyscale.growth.snapshots import SnapshotStore

    saved = json.loads((checkpoint / "trainer.json").read_text())
    differ = sorted(k for k in settings if saved["settings"].get(k) != settings[k])
    if differ:
        detail = ", ".join(f"{k}: saved {saved['settings'].get(k)!r}, given {settings[k]!r}" for k in differ)
        raise ValueError(f"{checkpoint} holds a run with other settings ({detail}); pass resume=False "
                         "(--no-resume) or another output directory")  # fmt: skip
    trainer.load_state_dict(load_file(checkpoint / "trainer.safetensors"), saved["state"])
    trainer.store = SnapshotStore.load(checkpoint / "snapshots.safetensors")
    if trainer.schedule is not None:
        trainer.schedule.max_epochs = epochs
    history = [json.loads(line) for line in (checkpoint / "history.jsonl").read_text().splitlines()]
    return history[: trainer.epoch]


def _write_run(out: Path, trainer: SparseGrowthTrainer, history: list[dict], summary: dict) -> None:
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in trainer.net.state_dict().items()}
    atomic_write_bytes(out / "model.safetensors", save(state))
    atomic_write_text(out / "config.json", json.dumps(trainer.net.config(), indent=2) + "\n")
    trainer.store.save(out / "snapshots.safetensors")
    atomic_write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def load_grown(directory: str | Path) -> SparseMLP:
    """The final network of a ``polyscale grow sparse`` run directory."""
    config, state = read_run_dir(directory, "grow sparse")
    return SparseMLP.from_state(config, state)
