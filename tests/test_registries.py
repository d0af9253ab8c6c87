"""Every table a layer owns obeys that layer's contract, entry by entry, and the CLI offers exactly its names.

Tables: grid data kinds (``polyscale.data.DATASETS``), sparse-growth datasets
(``polyscale.data.CLASSIFICATION_DATASETS``), graph families (``polyscale.data.graphs.GRAPH_FAMILIES``),
depth-growth strategies (``growth.depth_grower.STRATEGIES``), detectors (``growth.depth_schedule.DETECTORS``),
regrowth rules (``growth.regrowth.METHODS``), OT kernels (``polyscale.ot.KERNELS``), devices
(``polyscale.devices.DEVICES``); samplers have their own contract tests (tests/test_samplers_*.py).
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from polyscale.cli.main import build_parser
from polyscale.data import CLASSIFICATION_DATASETS, DATASETS
from polyscale.data.config import DataConfig
from polyscale.data.graphs import GRAPH_FAMILIES, family_graph
from polyscale.devices import DEVICES, resolve_device
from polyscale.diffusion import SAMPLERS
from polyscale.growth.depth_grower import STRATEGIES, last_block_tensors, new_block_state
from polyscale.growth.depth_schedule import DETECTORS, make_detector
from polyscale.growth.regrowth import METHODS, dense_gradients, prune_and_regrow
from polyscale.growth.sparse_grower import FILLS, RANKS
from polyscale.growth.trajectory import TrajectoryWindow
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.nn.sparse_mlp import ACTIVATIONS, SparseMLP
from polyscale.ot import KERNELS, Grid, KernelOperator
from polyscale.pipelines.datasets import build_dataset, to_display
from polyscale.pipelines.graph_config import STRUCTURE_STAGES, GraphDataConfig
from polyscale.registry import Registry

# ------------------------------------------------------------------------------------------------ Registry


def test_registry_shows_names_and_lookup_names_what_it_expected():
    table = Registry("colour", {"red": 1, "blue": 2})
    assert str(table) == repr(table) == "('red', 'blue')" and f"{table}" == "('red', 'blue')"
    assert table.lookup("blue") == 2
    with pytest.raises(ValueError, match=r"colour must be one of \('red', 'blue'\), got 'green'"):
        table.lookup("green")


# ------------------------------------------------------------------------------------------- grid datasets


def test_grid_data_kinds_are_the_config_kinds():
    for kind in DATASETS:
        assert (
            DataConfig(kind=kind, path="x", crop_size=8).kind == kind
        )  # every table entry is a valid data.kind
    with pytest.raises(ValueError, match=r"data.kind must be one of .*'digits'.*got 'digitz'"):
        DataConfig(kind="digitz")


def _data_config(kind: str, tmp_path: Path) -> DataConfig:
    if kind == "array":
        np.save(tmp_path / "a.npy", np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32))
        return DataConfig(kind=kind, path=str(tmp_path / "a.npy"))
    if kind == "image_folder":
        from PIL import Image

        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        return DataConfig(kind=kind, path=str(tmp_path), size=8)
    if kind == "texture":
        return DataConfig(kind=kind, crop_size=8, num_samples=5, downsample=8)
    return DataConfig(kind=kind, size=8, dims=2, num_samples=20)


@pytest.mark.parametrize("kind", list(DATASETS))
def test_every_grid_data_kind_builds_items_of_x_in_its_range(kind: str, tmp_path: Path):
    cfg = _data_config(kind, tmp_path)
    ds = build_dataset(cfg, split="train")
    item = ds[0]
    assert len(ds) >= 1 and isinstance(item["x"], torch.Tensor) and item["x"].dtype == torch.float32
    assert item["x"].ndim >= 2  # (C, *spatial)
    if DATASETS[kind].unit_range:
        assert item["x"].min() >= -1 and item["x"].max() <= 1
        assert to_display(item["x"], kind).min() >= 0
    else:
        assert torch.equal(to_display(item["x"], kind), item["x"])
    assert DATASETS[kind].crops_per_sample(cfg) >= 1


# ---------------------------------------------------------------------------------- classification datasets


@pytest.mark.parametrize("name", list(CLASSIFICATION_DATASETS))
def test_every_classification_dataset_gives_three_disjoint_flat_splits(name: str):
    splits = CLASSIFICATION_DATASETS[name](0)
    assert len(splits) == 3
    features = splits[0][0].shape[1]
    for x, y in splits:
        assert x.dtype == torch.float32 and y.dtype == torch.long and x.ndim == 2 and x.shape[1] == features
        assert len(x) == len(y) > 0 and y.min() >= 0
    train, val = {tuple(r.tolist()) for r in splits[0][0]}, {tuple(r.tolist()) for r in splits[1][0]}
    assert len(train & val) <= 1  # not the same examples (a duplicate row at most)


def test_grow_sparse_datasets_are_the_configs():
    from polyscale.pipelines.grow_config import GrowSparseConfig

    allowed = typing.get_args(typing.get_type_hints(GrowSparseConfig)["dataset"])
    assert tuple(CLASSIFICATION_DATASETS) == allowed


# --------------------------------------------------------------------------------------------- graph families


def test_graph_families_are_the_config_families():
    assert set(GRAPH_FAMILIES) == set(typing.get_args(typing.get_type_hints(GraphDataConfig)["family"]))


@pytest.mark.parametrize("family", list(GRAPH_FAMILIES))
def test_every_graph_family_gives_a_seeded_simple_graph_of_about_the_size(family: str):
    g = GRAPH_FAMILIES[family](30, rng=np.random.default_rng(0))
    assert isinstance(g, nx.Graph) and not g.is_directed() and 20 <= g.number_of_nodes() <= 40
    assert g.number_of_edges() >= g.number_of_nodes() // 2 and nx.number_of_selfloops(g) == 0
    assert sorted(g.nodes) == list(range(g.number_of_nodes()))
    again = family_graph(family, 30, rng=np.random.default_rng(0))
    assert sorted(again.edges) == sorted(g.edges)  # seeded: the same graph
    with pytest.raises(ValueError, match=r"unknown graph family 'cube'"):
        family_graph("cube", 30, rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------------- depth-growth strategies


def _gpt_with_window() -> tuple[GPT, TrajectoryWindow]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    window = TrajectoryWindow(history_window_size=4, collect_interval_steps=1)
    for step in range(3):
        with torch.no_grad():
            for p in model.blocks[-1].parameters():
                p.add_(0.01 * (step + 1))
        window.add(step, {k: v.clone() for k, v in last_block_tensors(model).items()})
    with torch.no_grad():
        for p in model.blocks[-1].parameters():
            p.add_(0.05)
    return model, window


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_gives_a_state_the_model_can_insert(strategy: str):
    model, window = _gpt_with_window()
    expected = {k: v.shape for k, v in last_block_tensors(model).items()}
    state, metrics = new_block_state(
        model, strategy, window=window, generator=torch.Generator().manual_seed(1)
    )
    assert isinstance(metrics, dict)
    if state is not None:
        assert {k: v.shape for k, v in state.items()} == expected
        assert all(torch.isfinite(v).all() for v in state.values())
    model.insert_layer(model.config.n_layer, state)
    logits, _ = model(torch.zeros(1, 8, dtype=torch.long))
    assert model.config.n_layer == 3 and torch.isfinite(logits).all()


def test_an_unknown_strategy_names_the_known_ones():
    model, _ = _gpt_with_window()
    with pytest.raises(
        ValueError, match=r"strategy must be one of \('geometric', 'copy', 'zero', 'random'\)"
    ):
        new_block_state(model, "mirror")


# ------------------------------------------------------------------------------------------------- detectors


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_waits_out_warmup_then_fires_on_a_flat_loss_with_a_stretched_path(name: str):
    det = make_detector(name, warmup_steps=10, patience=2, threshold=0.01, tau_crit=2.0, kappa_crit=0.5)
    assert isinstance(det, DETECTORS[name])
    fired = [det.update(step, 1.0, tau=5.0, kappa=1.0) for step in range(0, 40, 5)]
    assert fired[:2] == [False, False]  # steps 0, 5: warm-up
    assert any(fired) and all(isinstance(f, bool) for f in fired)
    assert not any(
        make_detector(name, warmup_steps=0, patience=1).update(step, 10.0 / (step + 1), tau=5.0, kappa=1.0)
        for step in range(5)
    )  # a loss that keeps falling never fires


# ----------------------------------------------------------------------------------------- regrowth rules


@pytest.mark.parametrize("method", list(METHODS))
def test_every_regrowth_rule_keeps_each_block_connection_count_and_moves_connections(method: str):
    gen = torch.Generator().manual_seed(0)
    net = SparseMLP(6, [8], 3, density=0.3, generator=gen)
    x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    before = {name: (block.nnz, block.mask().clone()) for name, block in net.blocks.items()}
    grads = dense_gradients(net, x, y, torch.nn.functional.cross_entropy)
    changes = prune_and_regrow(net, 0.5, method, dense_grads=grads, generator=gen)
    assert changes
    for name, block in net.blocks.items():
        nnz, mask = before[name]
        assert block.nnz == nnz
        assert (block.mask() & ~mask).any()  # some positions inactive before are active now
    if METHODS[method].needs_gradients:
        with pytest.raises(ValueError, match="dense gradient"):
            prune_and_regrow(net, 0.5, method)


# --------------------------------------------------------------------------------------------------- kernels


def _kernel(name: str) -> KernelOperator:
    cls = KERNELS[name]
    if cls is Grid:
        return Grid((6, 5), 0.3)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 7, 2, generator=gen, dtype=torch.float64), torch.rand(1, 5, 2, dtype=torch.float64)
    if name == "dense":
        return cls(x, y, 0.3)
    return cls(x, y, 0.3, rank=4, generator=gen)


@pytest.mark.parametrize("name", list(KERNELS))
def test_every_kernel_applies_the_matrix_it_represents(name: str):
    kernel = _kernel(name)
    assert isinstance(kernel, KernelOperator)
    b, n, m = kernel.shape
    log_k = kernel.log_kernel_matrix()
    assert log_k.shape == (b, n, m)
    h = torch.randn(b, m, dtype=log_k.dtype)
    assert torch.allclose(kernel.log_apply(h), torch.logsumexp(log_k + h[:, None, :], dim=2), atol=1e-6)
    g = torch.randn(b, n, dtype=log_k.dtype)
    assert torch.allclose(kernel.log_apply_t(g), torch.logsumexp(log_k + g[:, :, None], dim=1), atol=1e-6)
    assert type(kernel.with_epsilon(0.5)) is type(kernel) and kernel.with_epsilon(0.5).epsilon == 0.5


def test_kernel_table_covers_the_config_kinds():
    from polyscale.ot.config import KINDS

    assert set(KERNELS) == set(KINDS) - {"auto"}


# --------------------------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("name", list(DEVICES))
def test_every_device_name_resolves_to_a_device_or_says_why_not(name: str):
    if name == "cuda" and not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device(name)
        return
    assert isinstance(resolve_device(name), torch.device)


def test_an_unknown_device_names_the_known_ones():
    with pytest.raises(ValueError, match=r"device must be one of \('auto', 'cpu', 'cuda'\), got 'tpu'"):
        resolve_device("tpu")


# ------------------------------------------------------------------------------------- the CLI reads them


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(command path, parser)`` for the top-level parser and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


# (command, dest) -> the names its choices must equal; None: every command's flag of that dest
SOURCES: dict[tuple[str | None, str], typing.Iterable] = {
    (None, "sampler"): SAMPLERS,
    (None, "position_sampler"): SAMPLERS,
    (None, "device"): DEVICES,
    ("grow depth", "strategy"): STRATEGIES,
    ("grow depth", "detector"): DETECTORS,
    ("grow sparse", "dataset"): CLASSIFICATION_DATASETS,
    ("grow sparse", "activation"): ACTIVATIONS,
    ("grow sparse", "regrowth"): METHODS,
    ("grow sparse", "rank"): RANKS,
    ("grow sparse", "fill"): [f for f in FILLS if f is not None],
    ("grow sparse", "skip"): range(4),  # SparseMLP accepts skip 0..3
    ("graph train", "stage"): STRUCTURE_STAGES,
    ("sample", "dim"): (1, 2, 3),  # shipped models and UNet dims
    ("sample", "save_raw"): ("npy", "pt"),  # file formats the sample pipeline writes
}


def test_every_cli_choices_list_equals_its_registry():
    seen = set()
    for path, parser in _walk(build_parser()):
        command = " ".join(path)
        for action in parser._actions:
            if action.choices is None or isinstance(action, argparse._SubParsersAction):
                continue
            key = (command, action.dest) if (command, action.dest) in SOURCES else (None, action.dest)
            assert key in SOURCES, f"{command} --{action.dest}: choices from no known table"
            assert sorted(action.choices, key=str) == sorted(SOURCES[key], key=str), (command, action.dest)
            seen.add(key)
    assert seen == set(SOURCES)  # no stale entry above
