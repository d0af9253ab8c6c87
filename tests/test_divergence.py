"""Divergence in every training loop: a NaN or infinite loss or gradient norm stops the run with a
DivergenceError naming the step, the cause and the last finite checkpoint; nothing non-finite is written;
``max_bad_steps`` skips isolated bad steps, and a resumed run skips exactly as an uninterrupted one.

Oracles: an absurd learning rate that really overflows, NaN injected into the loss (or the gradients, or the
data) at chosen steps, the weights before and after a skipped step, and an uninterrupted run for resume.
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dist_train_script import denoise_loss, make_dataset, make_model  # the tiny model test_training uses
from polyscale.data.text import CharCorpus
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.nn.sparse_mlp import SparseMLP
from polyscale.training import DivergenceError, TrainConfig, train, warmup_cosine
from polyscale.training.checkpoint import checkpoint_dirs, load_training_state, prefixed, save_training_state
from polyscale.training.depth_growth import train_lm
from polyscale.training.sparse_growth import SparseGrowthTrainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    base = dict(max_steps=8, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=2, log_every=1, seed=3,
                ema_decay=0.9, output_dir=str(tmp_path / name), progress=False)  # fmt: skip
    return TrainConfig(**{**base, **kw})


class NaNLossAt:
    """``denoise_loss``, NaN at the given 0-based optimizer steps (the loop announces each with set_step)."""

    def __init__(self, *steps: int) -> None:
        self.bad, self.step = set(steps), -1

    def set_step(self, step: int) -> None:
        self.step = step

    def __call__(self, model, x0, *, generator=None, **cond):
        loss = denoise_loss(model, x0, generator=generator, **cond)
        return loss * math.nan if self.step in self.bad else loss


class Exports:
    """export_fn keeping what it was handed at each call."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, directory: Path, model: torch.nn.Module, ema: torch.nn.Module) -> None:
        both = {**model.state_dict(), **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
        self.weights.append({k: v.detach().clone() for k, v in both.items()})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values())


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- the diffusion loop (polyscale train, polyscale graph train) -------------------------------------------


def test_an_absurd_learning_rate_diverges_before_any_checkpoint(tmp_path):
    exports = Exports()
    cfg = config(tmp_path, lr=1e25, grad_clip=None, warmup_steps=0, checkpoint_every=4)
    with pytest.raises(DivergenceError) as err:
        train(make_model(0), denoise_loss, make_dataset(), cfg, export_fn=exports)
    msg = str(err.value)
    assert (
        "\n" not in msg
        and err.value.step == 2
        and msg.startswith("training diverged at step 2: the loss is ")
    )
    assert "train.lr=1e+25 is probably too high: lower it or set train.grad_clip" in msg
    assert msg.endswith("no checkpoint was written yet") and err.value.checkpoint is None
    assert checkpoint_dirs(tmp_path / "run") == [] and exports.weights == []
    rows = metrics_rows(tmp_path / "run")  # the steps up to the failure stay logged, the bad one included
    assert [r["step"] for r in rows] == ["1", "2"] and math.isfinite(float(rows[0]["loss"]))
    assert not math.isfinite(float(rows[1]["loss"]))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    exports = Exports()
    cfg = config(tmp_path)  # checkpoints every 2 steps, keeps 2
    with pytest.raises(DivergenceError) as err:
        train(make_model(0), NaNLossAt(4), make_dataset(), cfg, export_fn=exports)  # step 5 goes bad
    newest = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert err.value.step == 5 and err.value.checkpoint == newest
    msg = str(err.value)
    assert "training diverged at step 5: the loss is nan and the gradient norm is nan" in msg
    assert "train.lr=0.01 is probably too high: lower it;" in msg  # grad_clip is on: no advice to set it
    assert msg.endswith(f"last good checkpoint kept: {newest}")
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000002", "step_00000004"]
    tensors, meta = load_training_state(newest)
    assert meta["step"] == 4 and all_finite(tensors) and all_finite(prefixed(tensors, "ema"))
    assert len(exports.weights) == 2 and all(all_finite(w) for w in exports.weights)
    assert [r["step"] for r in metrics_rows(tmp_path / "run")] == ["1", "2", "3", "4", "5"]
    # the kept checkpoint resumes: with a finite loss the run trains on to its end
    resumed = train(make_model(7), denoise_loss, make_dataset(), cfg)
    assert resumed.step == 8 and len(resumed.losses) == 4 and all(map(math.isfinite, resumed.losses))


def test_weights_that_stop_being_finite_are_never_checkpointed(tmp_path):
    def break_weights(step: int, model: torch.nn.Module, metrics: dict) -> None:
        if step == 4:  # the loss and gradients of step 4 were finite; its weights are not
            with torch.no_grad():
                model.conv_out.bias.fill_(math.inf)

    exports = Exports()
    with pytest.raises(DivergenceError) as err:
        train(make_model(0), denoise_loss, make_dataset(), config(tmp_path), export_fn=exports,
              callbacks=[break_weights])  # fmt: skip
    assert "at step 4: parameter 'conv_out.bias' holds inf (1 of 1 values)" in str(err.value)
    assert err.value.checkpoint == tmp_path / "run" / "checkpoints" / "step_00000002"
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000002"]
    assert len(exports.weights) == 1 and all_finite(exports.weights[0])


def test_bad_steps_up_to_the_limit_are_skipped_without_touching_the_weights(tmp_path):
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int, model: torch.nn.Module, metrics: dict) -> None:
        snapshots[step] = weights(model)

    cfg = config(tmp_path, max_bad_steps=2, checkpoint_every=8)
    result = train(make_model(0), NaNLossAt(2, 3), make_dataset(), cfg, callbacks=[keep])  # steps 3, 4
    assert result.step == 8 and all_finite(snapshots[8])
    for skipped in (3, 4):
        assert all(torch.equal(snapshots[skipped][k], snapshots[2][k]) for k in snapshots[2]), skipped
    assert not all(torch.equal(snapshots[5][k], snapshots[4][k]) for k in snapshots[4])
    assert [math.isnan(v) for v in result.losses] == [False, False, True, True, False, False, False, False]
    assert math.isfinite(result.final_loss)
    rows = metrics_rows(tmp_path / "run")
    expected = [cfg.lr * warmup_cosine(s, warmup_steps=2, max_steps=8, min_lr_ratio=0.1) for s in range(8)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)  # the schedule went on

    # one bad step more than the limit in a row stops the run
    with pytest.raises(DivergenceError) as err:
        train(make_model(0), NaNLossAt(2, 3, 4), make_dataset(), replace(cfg, output_dir=str(tmp_path / "b")))
    assert "at step 5: the loss is nan and the gradient norm is nan (3 bad steps in a row, more than " \
           "train.max_bad_steps=2)" in str(err.value)  # fmt: skip


def stop_at(step: int):
    def crash(s: int, model, metrics) -> None:
        if s == step:
            raise RuntimeError("simulated crash")

    return crash


@pytest.mark.long
def test_a_resumed_run_skips_exactly_as_an_uninterrupted_one(tmp_path):
    cfg = dict(max_steps=8, checkpoint_every=4, max_bad_steps=2)
    straight = make_model(0)
    train(straight, NaNLossAt(3, 4), make_dataset(), config(tmp_path, "a", **cfg))
    with pytest.raises(RuntimeError, match="simulated crash"):  # the checkpoint at step 4 is mid-streak
        train(
            make_model(0),
            NaNLossAt(3, 4),
            make_dataset(),
            config(tmp_path, "b", **cfg),
            callbacks=[stop_at(6)],
        )
    resumed = make_model(99)
    train(resumed, NaNLossAt(3, 4), make_dataset(), config(tmp_path, "b", **cfg))
    assert all(
        torch.equal(a, b) for a, b in zip(weights(straight).values(), weights(resumed).values(), strict=True)
    )

    # the count of bad steps in a row survives the resume: steps 4, 5, 6 are bad, the limit is 2
    with pytest.raises(DivergenceError, match="at step 6: .*3 bad steps in a row"):
        train(make_model(0), NaNLossAt(3, 4, 5), make_dataset(), config(tmp_path, "c", **cfg))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_model(0), NaNLossAt(3, 4, 5), make_dataset(), config(tmp_path, "d", **cfg),
              callbacks=[stop_at(5)])  # fmt: skip
    with pytest.raises(DivergenceError, match="at step 6: .*3 bad steps in a row"):
        train(make_model(0), NaNLossAt(3, 4, 5), make_dataset(), config(tmp_path, "d", **cfg))


# --- the sparse growth trainer (polyscale grow sparse) ----------------------------------------------------


def _classification(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 5, (n,), generator=g)


def _sparse_trainer(lr: float = 1e-2, **kw) -> SparseGrowthTrainer:
    x, y = _classification()
    net = SparseMLP(12, [8, 8], 5, density=0.3, activation="relu", generator=torch.Generator().manual_seed(0))
    return SparseGrowthTrainer(net, (x, y), (x[:10], y[:10]), lr=lr, batch_size=10, snapshots=False, **kw)


def test_sparse_trainer_stops_on_an_absurd_learning_rate():
    with pytest.raises(DivergenceError) as err:
        _sparse_trainer(lr=1e20).fit(3, progress=False)
    msg = str(err.value)
    assert msg.startswith("training diverged at step 2 (epoch 1, batch 2 of 4): the loss is nan")
    assert "lr=1e+20 is probably too high: lower it" in msg and "\n" not in msg


def test_sparse_trainer_keeps_its_last_finite_checkpoint_and_skips_isolated_bad_batches(tmp_path):
    trainer = _sparse_trainer(output_dir=tmp_path)
    trainer.fit(1, progress=False)
    tensors, meta = trainer.state_dict()
    save_training_state(tmp_path, trainer.epoch, tensors=tensors, meta={"trainer": meta}, keep=1)
    trainer.train_x[0] = math.nan  # one corrupt example: one bad batch per epoch
    with pytest.raises(DivergenceError) as err:
        trainer.fit(1, progress=False)
    newest = tmp_path / "checkpoints" / "step_00000001"
    assert "(epoch 2, batch" in str(
        err.value
    ) and "the loss is nan and the sum of the gradients is nan" in str(err.value)
    assert str(err.value).endswith(f"last good checkpoint kept: {newest}")
    tensors, meta = load_training_state(newest)
    fresh = _sparse_trainer()
    fresh.load_state_dict(tensors, meta["trainer"])
    assert all_finite(fresh.net.state_dict())

    # allowed to skip two in a row (a bad last batch may meet a bad first one), the run trains on
    tolerant = _sparse_trainer(max_bad_steps=2)
    tolerant.train_x[0] = math.nan
    history = tolerant.fit(3, progress=False)
    assert all(math.isfinite(h["loss"]) for h in history) and all_finite(tolerant.net.state_dict())
    _, meta = tolerant.state_dict()
    assert meta["bad_steps"] in (0, 1, 2)


def test_sparse_trainer_refuses_to_checkpoint_non_finite_weights():
    trainer = _sparse_trainer()
    trainer.fit(1, progress=False)
    with torch.no_grad():
        next(iter(trainer.net.sparse_blocks().values())).values[0] = math.nan
    with pytest.raises(
        DivergenceError, match=r"training diverged at epoch 1: parameter '.*values' holds nan"
    ):
        trainer.state_dict()


# --- the depth growth loop (polyscale grow depth) ----------------------------------------------------------


def _gpt(corpus: CharCorpus) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))


CORPUS = "abcdefghij klmnopqrst " * 60


def test_depth_loop_stops_on_an_absurd_learning_rate_and_keeps_its_checkpoint(tmp_path):
    corpus = CharCorpus.from_text(CORPUS)
    kw = dict(batch_size=4, warmup_steps=0, eval_interval=5, eval_iters=1, progress=False, output_dir=tmp_path,
              checkpoint_every=2)  # fmt: skip
    train_lm(_gpt(corpus), corpus, max_steps=2, lr=1e-3, **kw)  # a finite checkpoint at step 2
    with pytest.raises(DivergenceError) as err:  # resumed with an absurd rate
        train_lm(_gpt(corpus), corpus, max_steps=10, lr=1e30, **kw)
    newest = tmp_path / "checkpoints" / "step_00000002"
    msg = str(err.value)
    assert msg.startswith("training diverged at step 4: the loss is nan and the gradient norm is nan;")
    assert "lr=1e+30 is probably too high: lower it;" in msg
    assert msg.endswith(f"last good checkpoint kept: {newest}")
    tensors, meta = load_training_state(newest)
    assert meta["step"] == 2 and all_finite(prefixed(tensors, "model"))


def test_depth_loop_skips_a_step_with_nan_gradients_up_to_the_limit():
    corpus = CharCorpus.from_text(CORPUS)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def run(max_bad_steps: int):
        model = _gpt(corpus)
        count = {"step": 0}

        def keep(step, model, optimizer, loss):
            count["step"] = step
            seen[step] = weights(model)

        # the gradient of one weight is NaN during step 3 only (a transient fault, e.g. a bad batch)
        model.wte.weight.register_hook(lambda g: g * math.nan if count["step"] == 2 else g)
        train_lm(model, corpus, max_steps=5, batch_size=4, warmup_steps=0, eval_interval=5, eval_iters=1,
                 callbacks=[keep], progress=False, max_bad_steps=max_bad_steps)  # fmt: skip
        return model

    with pytest.raises(DivergenceError, match=r"at step 3: the gradient norm is nan; lr=0.001 is probably"):
        run(0)
    model = run(1)
    assert all(torch.equal(seen[3][k], seen[2][k]) for k in seen[2])  # step 3 changed nothing
    assert not all(torch.equal(seen[4][k], seen[3][k]) for k in seen[3])
    assert all_finite(weights(model))
