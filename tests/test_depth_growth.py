"""Trajectory geometry, extrapolation, stagnation detectors, GPT layer insertion, optimizer state
across insertion, the growth callback and the layer-state manager."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from polyscale.data.text import CharCorpus
from polyscale.growth import (
    GeometricExtrapolator,
    LossPlateau,
    StagnationDetector,
    effective_curvature,
    stretch_factor,
)
from polyscale.growth.depth_grower import new_block_state
from polyscale.growth.layer_state import LayerStateManager
from polyscale.growth.trajectory import TrajectoryWindow
from polyscale.io import model_from_state
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.training.depth_growth import DepthGrowthCallback, make_optimizer, train_lm
from polyscale.training.optimizer_state import add_parameters


def _gpt(n_layer=2, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=n_layer, n_head=2, n_embd=16, **kw))


def _tokens(b=3, t=16, seed=0):
    return torch.randint(0, 11, (b, t), generator=torch.Generator().manual_seed(seed))


# --- geometry -----------------------------------------------------------------------------------------


def test_straight_line_has_tau_one_and_kappa_zero():
    direction = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    steps = torch.tensor([0.0, 0.3, 0.5, 1.2, 2.0, 2.1], dtype=torch.double)  # uneven speed, one direction
    line = torch.stack([1.5 + s * direction for s in steps])  # (6, 7, 5): a 2-D tensor's trajectory
    assert stretch_factor(line) == pytest.approx(1.0, abs=1e-12)
    assert effective_curvature(line) == pytest.approx(0.0, abs=1e-12)
    vec = torch.stack([s * torch.ones(4) for s in steps])  # a 1-D vector's trajectory
    assert stretch_factor(vec) == pytest.approx(1.0, abs=1e-12)


def test_zig_zag_has_tau_above_one_and_positive_kappa():
    # (0,0) -> (1,1) -> (2,0) -> (3,1) -> (4,0): path 4 sqrt(2), chord 4
    zig = torch.tensor([[0.0, 0], [1, 1], [2, 0], [3, 1], [4, 0]])
    assert stretch_factor(zig) == pytest.approx(math.sqrt(2))
    assert effective_curvature(zig) == pytest.approx(1.0)  # equal sideways and forward motion
    back = torch.tensor([[0.0], [1.0], [0.5], [1.5]])  # going back and forth along one axis
    assert stretch_factor(back) == pytest.approx(2.5 / 1.5)
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        stretch_factor(torch.zeros(1, 3))


def test_extrapolation_with_zero_gains_returns_w_last_for_matrices_and_vectors():
    g = torch.Generator().manual_seed(1)
    for shape in ((6, 4), (9,)):
        history = [torch.randn(shape, generator=g) for _ in range(6)]
        w_new, metrics = GeometricExtrapolator(beta0=0.0, gamma0=0.0, eta0=0.0).extrapolate(history)
        assert w_new.shape == shape and torch.equal(w_new, history[-1])
        assert metrics["beta"] == metrics["gamma"] == metrics["eta"] == 0.0


def test_linear_term_continues_a_straight_trajectory():
    d = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    history = [k * d for k in range(5)]  # constant velocity d
    w_new, m = GeometricExtrapolator(beta0=0.5, gamma0=0.0, eta0=0.0).extrapolate(history)
    assert m["tau"] == pytest.approx(1.0) and m["eta"] == 0.0
    torch.testing.assert_close(w_new, history[-1] + 0.5 / (1 + 1e-8) * d)  # beta = beta0 / (tau + eps)


def test_escape_term_only_under_stagnation_and_orthogonal_to_the_dominant_subspace():
    ex = GeometricExtrapolator(beta0=0.0, gamma0=0.0, eta0=1.0, k_subspace=1, ell_orth=2, tau_crit=1.1,
                               kappa_crit=0.1)  # fmt: skip
    assert ex.coefficients(1.0, 0.0)[2] == 0.0  # not stagnating: no escape
    assert ex.coefficients(2.1, 0.6)[2] == pytest.approx(1.0 * 1.0 * 0.5)  # eta0 (tau - tc)(kappa - kc)
    g = torch.Generator().manual_seed(3)
    history = torch.cumsum(torch.randn(8, 6, generator=g), dim=0)  # a random walk: stagnating
    w_new, m = ex.extrapolate(history)
    assert m["eta"] > 0 and m["secondary"] == 2
    v = (history[1:] - history[:-1]).double()
    top = torch.linalg.svd(v, full_matrices=False)[2][0]
    step = (w_new - history[-1]).double()
    assert step.norm() > 0 and abs(float(step @ top)) < 1e-5 * float(step.norm())


# --- detectors -------------------------------------------------------------------------------------------


def test_loss_plateau_fires_after_patience_stagnant_checks_and_rewarms():
    det = LossPlateau(warmup_steps=100, patience=2, threshold=0.05)
    assert not det.update(50, 3.0)  # warm-up
    assert not det.update(100, 2.0)  # a 33 % gain
    assert not det.update(150, 1.99)  # stagnant 1
    assert det.update(200, 1.98)  # stagnant 2: fire
    assert not det.update(250, 1.97) and not det.update(300, 1.96)  # warm-up again after growth
    with pytest.raises(ValueError, match="NaN"):
        det.update(350, float("nan"))


def test_stagnation_detector_needs_the_geometry_to_agree():
    det = StagnationDetector(warmup_steps=0, patience=1, threshold=0.05, tau_crit=2.0, kappa_crit=0.5)
    det.update(0, 2.0, tau=1.0, kappa=0.0)
    assert not det.update(1, 2.0, tau=1.1, kappa=0.1)  # flat loss, straight path: not stagnation
    assert not det.update(2, 2.0)  # no geometry yet: does not count
    assert det.update(3, 2.0, tau=3.0, kappa=0.1)  # flat loss and a stretched path


# --- model -----------------------------------------------------------------------------------------------


def test_zero_initialised_insertion_leaves_outputs_unchanged():
    model = _gpt().eval()
    x = _tokens()
    before = model(x)[0]
    for index in (2, 0, 1):
        state, _ = new_block_state(model, "zero", generator=torch.Generator().manual_seed(0))
        model.insert_layer(index, state)
        assert torch.equal(model(x)[0], before)
    assert model.config.n_layer == len(model.blocks) == 5


def test_insert_layer_updates_config_and_checks_its_input():
    model = _gpt()
    n = model.num_params()
    new = model.insert_layer(2)
    assert model.config.n_layer == 3 and len(new) == len(list(model.blocks[2].parameters()))
    assert model.num_params() == n + sum(p.numel() for p in new)
    copy, _ = new_block_state(model, "copy")
    assert all(torch.equal(copy[k], v) for k, v in model.blocks[-1].state_dict().items())
    with pytest.raises(ValueError, match="index"):
        model.insert_layer(9)
    with pytest.raises(ValueError, match="keys"):
        model.insert_layer(0, {"nope": torch.zeros(1)})
    assert model.config.n_layer == 3
    rebuilt = model_from_state(GPT, asdict(model.config), model.state_dict())
    x = _tokens()
    assert torch.equal(rebuilt.eval()(x)[0], model.eval()(x)[0])


def test_optimizer_state_of_existing_parameters_survives_insertion():
    model = _gpt()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    x, y = _tokens(), _tokens(seed=1)
    for _ in range(3):
        opt.zero_grad()
        model(x, y)[1].backward()
        opt.step()
    saved = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    new = model.insert_layer(2)
    add_parameters(opt, new)
    for p, state in saved.items():
        assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())
    assert all(p not in opt.state for p in new)  # fresh: Adam creates zero moments at their first step
    assert all(any(p is q for q in opt.param_groups[0 if p.ndim >= 2 else 1]["params"]) for p in new)
    opt.zero_grad()
    model(x, y)[1].backward()
    opt.step()
    assert all(int(opt.state[p]["step"]) == 1 for p in new)
    assert all(int(opt.state[p]["step"]) == 4 for p in saved)
    with pytest.raises(ValueError, match="already"):
        add_parameters(opt, new)


def test_geometric_strategy_builds_a_block_near_the_last_one():
    model = _gpt()
    window = TrajectoryWindow(history_window_size=5, collect_interval_steps=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _tokens(), _tokens(seed=1)
    for step in range(5):
        opt.zero_grad()
        model(x, y)[1].backward()
        opt.step()
        window.observe(step, dict(model.blocks[-1].state_dict()))
    state, m = new_block_state(model, "geometric", window=window, extrapolator=GeometricExtrapolator())
    assert m["points"] == 5  # the last snapshot is the current state: not counted twice
    opt.zero_grad()
    model(x, y)[1].backward()
    opt.step()  # the weights move on after the last snapshot
    assert new_block_state(model, "geometric", window=window)[1]["points"] == 6
    last = model.blocks[-1].state_dict()
    diff = sum(float((state[k] - last[k]).norm()) for k in last)
    assert 0 < diff and m["tau"] >= 1.0 and m["beta"] > 0
    with pytest.raises(ValueError, match="window"):
        new_block_state(model, "geometric", window=TrajectoryWindow(3, 1))
    one = TrajectoryWindow(3, 1)
    one.add(0, dict(model.blocks[-1].state_dict()))
    with pytest.raises(ValueError, match="two distinct"):
        new_block_state(model, "geometric", window=one)  # one snapshot, equal to now
    with pytest.raises(ValueError, match="strategy"):
        new_block_state(model, "clone")


# --- loop, callback, layer states ------------------------------------------------------------------------


def test_callback_grows_during_training_and_records_the_jump(tmp_path):
    corpus = CharCorpus.from_text("abcdefghij " * 300)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    probe = corpus.batch("train", 4, 16, generator=torch.Generator().manual_seed(0))
    manager = LayerStateManager(tmp_path / "layers")
    cb = DepthGrowthCallback(LossPlateau(warmup_steps=10, patience=1, threshold=1.0), strategy="zero",
                             collect_interval_steps=5, history_window_size=4, max_layers=3, probe=probe,
                             layer_states=manager)  # fmt: skip
    run = train_lm(model, corpus, max_steps=60, batch_size=4, eval_interval=20, eval_iters=2, callbacks=[cb],
                   progress=False)  # fmt: skip
    assert model.config.n_layer == 3 and [e.n_layer for e in cb.events] == [2, 3]
    assert all(abs(e.jump) < 1e-5 for e in cb.events)  # zero-initialised blocks: no jump
    assert run.history[-1]["n_layer"] == 3 and run.history[0]["n_layer"] == 1
    flops = [h["flops"] for h in run.history]
    assert flops == sorted(flops) and run.flops == flops[-1] > 0
    assert cb.checks and all(c["tau"] is None or c["tau"] >= 1.0 - 1e-9 for c in cb.checks)
    first = cb.events[0].step
    saved = manager.load_state(1, "init", first)
    assert set(saved) == set(model.blocks[1].state_dict())
    assert LayerStateManager(tmp_path / "layers").states(layer_id=1)  # the index is on disk


def test_layer_state_manager_round_trip_and_errors(tmp_path):
    manager = LayerStateManager(tmp_path)
    state = {"w": torch.randn(3, 2), "b": torch.randn(3)}
    manager.save_state(0, "L0", state, 100)
    manager.save_state(0, "L0", {k: v + 1 for k, v in state.items()}, 200)
    assert torch.equal(manager.load_state(0, "L0", 100)["w"], state["w"])
    assert torch.equal(manager.load_state(0, "L0")["w"], state["w"] + 1)  # latest
    assert [e["step"] for e in LayerStateManager(tmp_path).states(0, "L0")] == [100, 200]
    with pytest.raises(KeyError, match="no state"):
        manager.load_state(1, "L0")
    with pytest.raises(ValueError, match="state_name"):
        manager.save_state(0, "../x", state, 1)


def test_char_corpus_split_batches_and_errors(tmp_path):
    corpus = CharCorpus.from_text("hello world, " * 50)
    assert len(corpus.train) == int(0.9 * 650) and corpus.decode(corpus.encode("low")) == "low"
    x, y = corpus.batch("train", 5, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="split"):
        corpus.batch("test", 1, 4)
    with pytest.raises(FileNotFoundError):
        CharCorpus.from_file(tmp_path / "missing.txt")
    default = CharCorpus.from_file()  # shipped, no download
    assert default.vocab_size == 65 and len(default.train) + len(default.val) == 1115394


def test_transformers_trainer_grows_the_live_model_and_optimizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from polyscale.training.hf_growth import CharWindows, GPTForTrainer, TrainerDepthGrowth

    corpus = CharCorpus.from_text("the quick brown fox jumps over the lazy dog. " * 60)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    model = GPTForTrainer(gpt)
    growth = DepthGrowthCallback(LossPlateau(warmup_steps=5, patience=1, threshold=1.0), strategy="random",
                                 collect_interval_steps=5, history_window_size=4, max_layers=2,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=25, per_device_train_batch_size=4, learning_rate=1e-3,
        weight_decay=0.1, logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=CharWindows(corpus, 16, 200),
                                   callbacks=[TrainerDepthGrowth(growth)])  # fmt: skip
    trainer.train()
    assert gpt.config.n_layer == 2 and len(growth.events) == 1
    new = list(gpt.blocks[1].parameters())
    live = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    in_groups = {id(p) for g in live.param_groups for p in g["params"]}
    assert all(id(p) in in_groups for p in new)
    grown_at = growth.events[0].step
    steps = {int(live.state[p]["step"]) for p in new}
    assert steps == {25 - grown_at}  # the new block trained from its insertion on, with fresh moments
    assert all(int(live.state[p]["step"]) == 25 for p in gpt.blocks[0].parameters())  # old ones kept theirs


def test_train_lm_resumes_exactly_where_it_stopped(tmp_path):
    corpus = CharCorpus.from_text("abcdefghij klmnopqrst " * 200)

    class Interrupt(Exception):
        pass

    def stop_at(step_to_stop):
        def cb(step, model, optimizer, loss):
            if step == step_to_stop:
                raise Interrupt

        return cb

    def run(directory, *extra):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
        cb = DepthGrowthCallback(LossPlateau(warmup_steps=10, patience=1, threshold=1.0), strategy="geometric",
                                 collect_interval_steps=5, history_window_size=4, max_layers=3,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
        result = train_lm(model, corpus, max_steps=50, batch_size=4, warmup_steps=5, eval_interval=10, eval_iters=2,
                          callbacks=[cb, *extra], progress=False, output_dir=directory, checkpoint_every=10,
                          settings={"seed": 0})  # fmt: skip
        return model, cb, result

    whole, cb_whole, r_whole = run(tmp_path / "whole")
    with pytest.raises(Interrupt):
        run(tmp_path / "split", stop_at(27))  # killed after the checkpoint at step 20, one layer inserted
    split, cb_split, r_split = run(tmp_path / "split")
    assert whole.config.n_layer == split.config.n_layer == 3
    assert [e.step for e in cb_whole.events] == [e.step for e in cb_split.events] and cb_split.events[
        0
    ].step < 20
    assert all(
        torch.equal(a, b)
        for a, b in zip(whole.state_dict().values(), split.state_dict().values(), strict=True)
    )
    assert r_whole.history == r_split.history and r_whole.flops == r_split.flops
    assert cb_whole.checks == cb_split.checks
    with pytest.raises(ValueError, match=r"settings differ .*\(seed: 0 -> 1\)"):
        train_lm(GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)),
                 corpus, max_steps=60, output_dir=tmp_path / "split", settings={"seed": 1},
                 progress=False)  # fmt: skip


def test_cli_grow_depth_writes_a_run_and_resumes(tmp_path, capsys):
    from polyscale.cli.main import main
    from polyscale.pipelines.grow_depth import load_grown_gpt

    text = tmp_path / "corpus.txt"
    text.write_text("a small corpus of our own, with its own characters. " * 80)
    out = tmp_path / "run"
    argv = ["grow", "depth", "--dataset-path", str(text), "--max-steps", "30", "--n-embd", "16", "--n-head", "2",
            "--block-size", "16", "--batch-size", "4", "--warmup-steps", "5", "--collect-interval", "5",
            "--pg-threshold", "0.9", "--detector", "plateau", "--strategy", "geometric", "--max-layers", "3",
            "--eval-interval", "10", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "sample:" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_layers"] == 3 and summary["growth_events"] == 2
    model, chars = load_grown_gpt(out)
    assert model.config.n_layer == 3 and len(chars) == model.config.vocab_size
    assert (out / "layers" / "index.json").is_file()
    assert main(argv) == 0  # a rerun finds the finished checkpoint and only writes the outputs again
    assert json.loads((out / "summary.json").read_text())["final_val_loss"] == summary["final_val_loss"]
    capsys.readouterr()
    assert main([*argv, "--lr", "0.002"]) == 2
    assert "settings differ from the saved run's (lr: 0.001 -> 0.002)" in capsys.readouterr().err
    (out / "layers" / "index.json").write_text(
        json.dumps([{"layer_id": 9, "state_name": "old", "step": 1, "file": "layer_9/old_step1.safetensors"}])
    )  # an entry no fresh run would write
    assert main([*argv, "--lr", "0.002", "--no-resume"]) == 0
    events = json.loads((out / "growth.json").read_text())["events"]
    saved = LayerStateManager(out / "layers").states()
    assert {e["step"] for e in saved} == {e["step"] for e in events} and all(e["layer_id"] < 3 for e in saved)
