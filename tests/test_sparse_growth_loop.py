"""Vertical cloning, prune-and-regrow, snapshots (exact deltas), ensembles, the growth loop and CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from polyscale.growth import SparseGrowthSchedule
from polyscale.growth.regrowth import cosine_fraction, dense_gradients, prune_and_regrow
from polyscale.growth.snapshots import SnapshotStore, ensemble_probabilities
from polyscale.growth.sparse_grower import SparseGrower
from polyscale.nn.sparse_mlp import SparseMLP
from polyscale.pipelines.grow_config import GrowSparseConfig
from polyscale.training.optimizer_state import apply_changes
from polyscale.training.run_dir import read_settings
from polyscale.training.sparse_growth import SparseGrowthTrainer


def _net(mode: str = "sparse", skip: int = 2, seed: int = 0, **kw) -> SparseMLP:
    g = torch.Generator().manual_seed(seed)
    return SparseMLP(12, [8, 9, 7], 5, skip=skip, density=0.3, mode=mode, generator=g, **kw).double()


def _adam_step(net: SparseMLP, x: torch.Tensor) -> torch.optim.Adam:
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net(x).pow(2).mean().backward()
    opt.step()
    return opt


@pytest.mark.parametrize("layer,into", [(1, 2), (2, 1), (2, 3), (3, 2)])
def test_function_preserving_clone_leaves_outputs_bit_identical(layer, into):
    net = _net("sparse")
    x = torch.randn(16, 12, dtype=torch.double)
    before = net(x)
    new, _ = net.clone_units(layer, [0, 3], into, preserve=True)
    assert new.tolist() == [net.sizes[into] - 2, net.sizes[into] - 1]
    assert torch.equal(net(x), before)  # sparse path: the clones' zero terms are added last, exactly


def test_function_preserving_clone_on_the_masked_path_matches_to_rounding():
    # the dense GEMM of the masked path is wider after cloning, so its summation order may change
    net = _net("masked")
    x = torch.randn(16, 12, dtype=torch.double)
    before = net(x)
    net.clone_units(2, [1, 4], 3, preserve=True)
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)


def test_clone_copies_scaled_weights_and_changes_the_function():
    net = _net("sparse")
    x = torch.randn(16, 12, dtype=torch.double)
    before = net(x)
    u, layer, into = 2, 1, 2
    src = net.blocks["1<-0"]
    row = (src.flat_index // src.in_features) == u
    expected_in = 0.7 * src.values.detach()[row]
    bias_u = float(net.blocks["1<-0"].bias.detach()[u])
    (c,), _ = net.clone_units(layer, [u], into)
    dst = net.blocks["2<-0"]  # the clone reads layer 0 through the skip block
    crow = (dst.flat_index // dst.in_features) == c
    torch.testing.assert_close(dst.values.detach()[crow], expected_in)
    assert torch.equal(dst.flat_index[crow] % 12, src.flat_index[row] % 12)
    assert float(net.blocks["2<-1"].bias.detach()[c]) == pytest.approx(0.7 * bias_u)
    assert not torch.allclose(net(x), before)


def test_clone_needs_skip_connections_and_valid_layers():
    net = _net(skip=0)
    with pytest.raises(ValueError, match="skip >= 1"):
        net.clone_units(1, [0], 2)
    assert net.sizes == [12, 8, 9, 7, 5]  # nothing changed
    with pytest.raises(ValueError, match="adjacent"):
        _net().clone_units(1, [0], 3)
    with pytest.raises(ValueError, match="distinct indices"):
        _net().clone_units(1, [8], 2)


def test_clone_carries_adam_state_over():
    net = _net()
    x = torch.randn(16, 12, dtype=torch.double)
    opt = _adam_step(net, x)
    old = net.blocks["2<-0"].values
    old_avg = opt.state[old]["exp_avg"].clone()
    _, changes = net.clone_units(1, [0, 5], 2)
    apply_changes(opt, changes)
    new = net.blocks["2<-0"].values
    where = next(c.where for c in changes if c.old is old)
    assert torch.equal(opt.state[new]["exp_avg"][where], old_avg)
    fresh = torch.ones(new.numel(), dtype=torch.bool)
    fresh[where] = False
    assert fresh.any() and (opt.state[new]["exp_avg"][fresh] == 0).all()
    net(x).sum().backward()
    opt.step()  # the optimizer runs on the grown parameters


def test_remove_connections_and_carry_over_drop_state():
    net = _net()
    x = torch.randn(16, 12, dtype=torch.double)
    opt = _adam_step(net, x)
    block = net.blocks["1<-0"]
    old, old_avg, old_flat = (
        block.values,
        opt.state[block.values]["exp_avg"].clone(),
        block.flat_index.clone(),
    )
    where = block.remove_connections(old_flat[[0, 3]])
    assert (where[[0, 3]] == -1).all() and block.nnz == old_flat.numel() - 2
    apply_changes(opt, [type("C", (), {"old": old, "new": block.values, "where": where})()])
    kept = where >= 0
    assert torch.equal(opt.state[block.values]["exp_avg"], old_avg[kept])
    with pytest.raises(ValueError, match="active positions"):
        block.remove_connections(old_flat[[0]])


def test_prune_and_regrow_keeps_connectivity_and_regrows_inactive_positions():
    net = _net(mode="masked", skip=0)
    x, y = torch.randn(32, 12, dtype=torch.double), torch.randint(0, 5, (32,))
    counts = {n: b.nnz for n, b in net.blocks.items()}
    masks = {n: b.mask().clone() for n, b in net.blocks.items()}
    grads = dense_gradients(net, x, y, F.cross_entropy)
    prune_and_regrow(net, 0.3, "rigl", dense_grads=grads)
    for name, block in net.blocks.items():
        assert block.nnz == counts[name]
        new = block.mask() & ~masks[name]
        k = int(0.3 * counts[name])
        assert int(new.sum()) == k
        if k:  # RigL: the regrown positions carry the largest |gradient| among the previously inactive ones
            inactive = grads[name].abs()[~masks[name]]
            assert grads[name].abs()[new].min() >= inactive.sort(descending=True).values[k - 1] - 1e-12
    prune_and_regrow(net, 0.3, "set", generator=torch.Generator().manual_seed(1))
    assert {n: b.nnz for n, b in net.blocks.items()} == counts
    assert cosine_fraction(0, 10) == pytest.approx(0.3) and cosine_fraction(10, 10) == pytest.approx(0.0)


def test_dense_gradients_match_autograd_on_active_positions():
    net = _net(mode="masked")
    x, y = torch.randn(32, 12, dtype=torch.double), torch.randint(0, 5, (32,))
    grads = dense_gradients(net, x, y, F.cross_entropy)
    F.cross_entropy(net(x), y).backward()
    for name, block in net.blocks.items():
        torch.testing.assert_close(grads[name].flatten()[block.flat_index], block.values.grad)


def _grow_and_snapshot(tmp_path=None):
    torch.manual_seed(0)
    net = _net(mode="sparse").float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(32, 12)
    store, states = SnapshotStore(), []
    for epoch in range(7):
        for _ in range(3):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
        if epoch in (2, 4):
            block = net.blocks["2<-1"]
            free = (~block.mask().flatten()).nonzero().squeeze(1)[:5]
            apply_changes(opt, [net.connect("2<-1", free, torch.full((5,), 0.1))])
            apply_changes(opt, net.clone_units(1, [epoch], 2)[1])
        phase = ["coarse", "coarse", "coarse", "medium", "medium", "fine", "fine"][epoch]
        store.add(net, epoch=epoch, phase=phase, reason="growth", metric=epoch / 10)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    return store, states, net, x


def test_snapshot_deltas_round_trip_bit_identical(tmp_path):
    store, states, net, x = _grow_and_snapshot()
    assert [i.keyframe for i in store.infos] == [True, False, False, True, False, True, False]
    assert store.by_phase() == {"coarse": [0, 1, 2], "medium": [3, 4], "fine": [5, 6]}
    assert store.compression_ratio > 1
    assert all(i.stored_bytes < i.raw_bytes for i in store.infos if not i.keyframe)
    path = store.save(tmp_path / "snaps.safetensors")
    loaded = SnapshotStore.load(path)
    for s in (store, loaded):
        for i in reversed(range(len(states))):  # each one alone, latest first
            got = s.state(i)
            assert got.keys() == states[i].keys()
            for k in got:
                assert got[k].dtype == states[i][k].dtype
                assert torch.equal(
                    got[k].view(-1).view(torch.uint8), states[i][k].view(-1).view(torch.uint8)
                ), k
    assert torch.equal(loaded.model(6)(x), net(x))
    assert loaded.model(2).sizes != loaded.model(6).sizes  # structure as it was then
    assert loaded.best() == 6


def test_snapshot_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a polyscale snapshot store"):
        SnapshotStore.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        SnapshotStore.load(tmp_path / "missing.safetensors")


def test_ensemble_equals_manual_average():
    store, _, _, x = _grow_and_snapshot()
    models = [store.model(i) for i in (1, 4, 6)]
    manual = sum(torch.softmax(m(x), dim=-1) for m in models) / 3
    torch.testing.assert_close(ensemble_probabilities(models, x), manual)
    with pytest.raises(ValueError):
        ensemble_probabilities([], x)


def _blobs(n=300, features=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    centers = torch.randn(5, features, generator=g) * 2
    return centers[y] + torch.randn(n, features, generator=g), y


def test_train_epoch_reports_statistics_and_grows():
    x, y = _blobs()
    net = SparseMLP(12, [16, 16], 5, skip=1, density=0.05, activation="sigmoid",
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    schedule = SparseGrowthSchedule(credits_per_spike=100.0, stabilisation_epochs=1, spike_threshold=1e-6)
    trainer = SparseGrowthTrainer(net, (x[:240], y[:240]), (x[240:], y[240:]), schedule=schedule,
                                  grower=SparseGrower(high=0.6, low=0.4), seed=0)  # fmt: skip
    history = [trainer.train_epoch() for _ in range(6)]
    keys = {"loss", "train_accuracy", "val_accuracy", "grew", "connections_added", "clones", "connectivity"}
    keys |= {
        "active",
        "high_extrema",
        "low_extrema",
        "phase",
        "spikes",
        "credits",
        "snapshots",
        "growth_done",
    }
    assert keys <= history[0].keys()
    grew = [h for h in history if h["grew"]]
    assert grew and sum(h["connections_added"] for h in grew) == trainer.connections_added > 0
    assert history[-1]["active"] > history[0]["active"] - history[0]["connections_added"]
    assert trainer.store is not None and len(trainer.store) >= len(grew)
    assert {i.reason for i in trainer.store.infos} >= {"growth"}


def test_trainer_rejects_bad_input():
    x, y = _blobs()
    net = SparseMLP(12, [8], 5)
    with pytest.raises(ValueError, match="features"):
        SparseGrowthTrainer(net, (x[:, :5], y), (x, y))
    with pytest.raises(ValueError, match="regrowth must be None or one of"):
        SparseGrowthTrainer(net, (x, y), (x, y), schedule=SparseGrowthSchedule(), regrowth="prune")


def test_cli_grow_sparse_writes_a_run(tmp_path, capsys):
    from polyscale.cli.main import main
    from polyscale.pipelines.grow import load_grown

    out = tmp_path / "run"
    code = main(["grow", "sparse", "--dataset", "digits", "--epochs", "3", "--hidden-sizes", "16", "16",
                 "--output-dir", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "snapshots" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["snapshots"] >= 1
    assert len((out / "history.jsonl").read_text().splitlines()) == 3
    net = load_grown(out)
    assert net.sizes == summary["final_sizes"]
    store = SnapshotStore.load(out / "snapshots.safetensors")
    assert len(store) == summary["snapshots"]


def test_cli_grow_sparse_opt_in_flags_reach_the_run(tmp_path, capsys):
    from polyscale.cli.main import main

    out = tmp_path / "run"
    code = main(["grow", "sparse", "--dataset", "digits", "--epochs", "2", "--hidden-sizes", "16", "16",
                 "--structure-size", "4", "--rank", "gradient", "--fill", "gradient", "--regrowth", "rigl",
                 "--output-dir", str(out)])  # fmt: skip
    assert code == 0 and "test accuracy" in capsys.readouterr().out
    saved = read_settings(out)
    assert (saved["structure_size"], saved["rank"], saved["fill"]) == (4, "gradient", "gradient")
    assert saved["regrowth"] == "rigl" and saved["grower"] == {}


def test_cli_grow_sparse_flag_errors(capsys):
    from polyscale.cli.main import main

    with pytest.raises(SystemExit) as err:
        main(["grow", "sparse", "--sparsity", "2"])
    assert err.value.code == 2
    assert "expected a number in (0.0, 1.0]" in capsys.readouterr().err


def test_grow_run_resumes_exactly_where_it_stopped(tmp_path):
    from safetensors.torch import load_file

    from polyscale.pipelines.grow import grow_sparse

    schedule = {"stabilisation_epochs": 1, "spike_threshold": 0.05}
    cfg = GrowSparseConfig(dataset="digits", hidden_sizes=(16, 16), progress=False, checkpoint_every=2,
                           schedule=schedule, grower={"high": 0.7, "low": 0.3})  # fmt: skip
    whole = grow_sparse(replace(cfg, epochs=6), tmp_path / "whole")
    grow_sparse(replace(cfg, epochs=4), tmp_path / "split")
    split = grow_sparse(replace(cfg, epochs=6), tmp_path / "split")  # resumes at epoch 4
    assert whole["growth_events"] > 0
    for key in ("test_accuracy", "final_connections", "growth_events", "connections_added", "final_sizes"):
        assert split[key] == whole[key], key
    a, b = (
        load_file(tmp_path / "whole" / "model" / "model.safetensors"),
        load_file(tmp_path / "split" / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    h = [json.loads(line) for line in (tmp_path / "split" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in h] == list(range(1, 7))
    with pytest.raises(ValueError, match=r"settings differ .*\(hidden_sizes: \[16, 16\] -> \[8, 8\]\)"):
        grow_sparse(replace(cfg, epochs=6, hidden_sizes=(8, 8)), tmp_path / "split")
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step_00000006"]
