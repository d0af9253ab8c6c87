"""Tests of the training loop: learning, exact resume, checkpoints/logs, two processes, bf16, validation.

Oracles: an uninterrupted run (for resume), a one-process run with the same global batch (for DDP),
closed-form LR/EMA formulas, and a slow explicit concatenation of epoch permutations (for the data order).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from polyscale.training import TrainConfig, batch_indices, ema_decay_at, ema_update, train, warmup_cosine
from polyscale.training.checkpoint import load_training_state, prefixed
from polyscale.training.data import make_loader

_spec = importlib.util.spec_from_file_location(
    "dist_train_script", Path(__file__).with_name("dist_train_script.py")
)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)
make_model, make_dataset, denoise_loss = fixtures.make_model, fixtures.make_dataset, fixtures.denoise_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread (and the shared 2-core machine is not oversubscribed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    base = dict(
        max_steps=8,
        batch_size=8,
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=4,
        log_every=2,
        seed=3,
        ema_decay=0.9,
        output_dir=str(tmp_path / name),
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max()}"


class Recorder:
    """export_fn that keeps copies of what it was given (the last call = the final weights)."""

    def __init__(self) -> None:
        self.calls: list[Path] = []
        self.model: dict[str, torch.Tensor] = {}
        self.ema: dict[str, torch.Tensor] = {}

    def __call__(self, directory: Path, model: torch.nn.Module, ema: torch.nn.Module) -> None:
        self.calls.append(directory)
        self.model, self.ema = params(model), params(ema)


# --- pure pieces against closed forms ---------------------------------------------------------------------


def test_warmup_cosine_closed_form():
    kw = dict(warmup_steps=4, max_steps=14, min_lr_ratio=0.2)
    assert [warmup_cosine(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, **kw) == pytest.approx(1.0)
    assert warmup_cosine(9, **kw) == pytest.approx(0.2 + 0.8 * 0.5)  # half-way: cos(pi/2) = 0
    assert warmup_cosine(14, **kw) == pytest.approx(0.2)
    assert warmup_cosine(100, **kw) == pytest.approx(0.2)
    assert warmup_cosine(0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == pytest.approx(1.0)


def test_ema_update_and_warmup():
    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    e0, p = params(ema), params(model)
    ema_update(ema, model, decay=0.75)
    for k in e0:
        assert torch.allclose(ema.state_dict()[k], 0.75 * e0[k] + 0.25 * p[k])
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay_at(10**6, 0.999) == 0.999
    assert ema_decay_at(0, 0.999, warmup=False) == 0.999


def stream_reference(step, micro, rank, *, P, A, b, n, seed):
    """Slow oracle: concatenate epoch permutations explicitly and slice the chunk out."""
    from polyscale.training.data import mix_seed

    total = (step + 1) * P * A * b
    stream = torch.cat(
        [
            torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, e)))
            for e in range(total // n + 1)
        ]
    )
    start = step * P * A * b + (micro * P + rank) * b
    return stream[start : start + b]


@pytest.mark.parametrize(("P", "A", "b", "n"), [(1, 1, 4, 12), (2, 3, 2, 10), (3, 1, 5, 7)])
def test_batch_indices_match_stream_and_cover_each_epoch(P, A, b, n):
    seen = []
    for step in range(4):
        for micro in range(A):
            for rank in range(P):
                where = dict(micro=micro, rank=rank, num_processes=P, grad_accum_steps=A)
                idx, epochs = batch_indices(step, micro_batch=b, dataset_len=n, seed=5, **where)
                ref = stream_reference(step, micro, rank, P=P, A=A, b=b, n=n, seed=5)
                assert torch.equal(idx, ref)
                seen.append((idx, epochs))
    idx = torch.cat([i for i, _ in seen])
    epochs = torch.cat([e for _, e in seen])
    for e in range(int(epochs.max())):  # every complete epoch is a permutation of the dataset
        assert sorted(idx[epochs == e].tolist()) == list(range(n))


def test_layout_invariance_of_chunks():
    """2 processes x 1 micro-batch and 1 process x 2 micro-batches cut the global batch the same way."""
    kw = dict(micro_batch=3, dataset_len=11, seed=1)
    for step in range(3):
        two_ranks = [
            batch_indices(step, micro=0, rank=r, num_processes=2, grad_accum_steps=1, **kw)[0]
            for r in range(2)
        ]
        two_micro = [
            batch_indices(step, micro=m, rank=0, num_processes=1, grad_accum_steps=2, **kw)[0]
            for m in range(2)
        ]
        assert all(torch.equal(a, b) for a, b in zip(two_ranks, two_micro, strict=True))


class EpochEcho(torch.utils.data.Dataset):
    """Items report their own index and the epoch set last, to check set_epoch reaches every item."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, -1

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([i, self.epoch])}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_follows_step_order_and_epochs(num_workers):
    kw = dict(micro_batch=4, grad_accum_steps=2, rank=1, num_processes=2, seed=9)
    loader = make_loader(EpochEcho(10), start_step=2, max_steps=5, num_workers=num_workers, **kw)
    batches = list(loader)
    assert len(batches) == 3 * 2
    for i, batch in enumerate(batches):
        step, micro = 2 + i // 2, i % 2
        idx, epochs = batch_indices(step, micro=micro, dataset_len=10, **kw)
        assert torch.equal(batch["x"][:, 0], idx) and torch.equal(batch["x"][:, 1], epochs)


# --- training runs ----------------------------------------------------------------------------------------


def test_loss_decreases(tmp_path):
    model = make_model(0)
    cfg = config(
        tmp_path,
        max_steps=80,
        warmup_steps=5,
        checkpoint_every=80,
        log_every=20,
        min_lr_ratio=0.5,
        progress=True,
    )
    result = train(model, denoise_loss, make_dataset(), cfg)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-10:]) / 10
    assert result.step == 80 and len(result.losses) == 80
    assert last < 0.5 * first, (first, last)
    assert math.isfinite(result.final_loss) and result.final_loss < first


class StepAwareLoss:
    """``denoise_loss`` that records the steps the loop reports through ``set_step``."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def set_step(self, step: int) -> None:
        self.steps.append(step)

    def __call__(self, model, x0, **kw):
        return denoise_loss(model, x0, **kw)


def test_loop_tells_a_step_aware_loss_each_step_also_after_a_resume(tmp_path):
    loss = StepAwareLoss()
    cfg = config(tmp_path, max_steps=4, checkpoint_every=2)
    train(make_model(0), loss, make_dataset(), cfg)
    assert loss.steps == [0, 1, 2, 3]
    resumed = StepAwareLoss()  # a fresh process picks up at the checkpointed step, not at 0
    train(make_model(0), resumed, make_dataset(), replace(cfg, max_steps=6))
    assert resumed.steps == [4, 5]


def stop_at(step: int):
    def crash(s: int, model, metrics) -> None:
        if s == step:
            raise RuntimeError("simulated crash")

    return crash


@pytest.mark.parametrize(
    ("grad_accum_steps", "dropout", "stop"),
    [(1, 0.0, "crash"), (2, 0.3, "crash"), (2, 0.3, "max_steps")],
)
def test_resume_is_exact(tmp_path, grad_accum_steps, dropout, stop):
    k = 4
    # stopping by max_steps=k changes the cosine horizon, so that variant uses a flat rate after warmup
    kw = dict(
        grad_accum_steps=grad_accum_steps,
        max_steps=2 * k,
        checkpoint_every=k,
        min_lr_ratio=1.0 if stop == "max_steps" else 0.1,
    )
    ds = make_dataset(labels=True)

    straight = Recorder()
    model_a = make_model(0, dropout=dropout, num_classes=3)
    res_a = train(model_a, denoise_loss, ds, config(tmp_path, "a", **kw), export_fn=straight)

    cfg_b = config(tmp_path, "b", **kw)
    model_b = make_model(0, dropout=dropout, num_classes=3)
    if stop == "crash":
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(model_b, denoise_loss, ds, cfg_b, callbacks=[stop_at(k + 1)])
    else:
        assert train(model_b, denoise_loss, ds, replace(cfg_b, max_steps=k)).step == k
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == [f"step_{k:08d}"]

    torch.manual_seed(12345)  # a "fresh process": other global RNG state, other initial weights
    resumed = Recorder()
    model_c = make_model(99, dropout=dropout, num_classes=3)
    res_c = train(model_c, denoise_loss, ds, cfg_b, export_fn=resumed)

    assert res_c.step == 2 * k and len(res_c.losses) == k
    assert res_c.losses == res_a.losses[k:]
    assert res_c.final_loss == res_a.final_loss
    assert_same(params(model_c), params(model_a))
    assert_same(resumed.model, straight.model)
    assert_same(resumed.ema, straight.ema)
    assert not torch.equal(resumed.ema["conv_in.weight"], resumed.model["conv_in.weight"])
    opt_a = torch.load(res_a.last_checkpoint / "optimizer.bin", weights_only=True)
    opt_c = torch.load(res_c.last_checkpoint / "optimizer.bin", weights_only=True)
    assert opt_a["param_groups"] == opt_c["param_groups"]
    for i, s in opt_a["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s[name], opt_c["state"][i][name]), (i, name)

    def rows(name):
        with open(tmp_path / name / "metrics.csv", newline="") as f:
            return [{k: r[k] for k in ("step", "loss", "lr", "grad_norm")} for r in csv.DictReader(f)]

    assert rows("b") == rows("a")  # rows written after the checkpoint by the crashed run were dropped


def test_checkpoints_logs_and_export(tmp_path):
    cfg = config(tmp_path, max_steps=7, checkpoint_every=2, keep_checkpoints=2, log_every=3, grad_clip=0.05)
    recorder = Recorder()
    seen = []
    model = make_model(0)
    result = train(
        model,
        denoise_loss,
        make_dataset(),
        cfg,
        export_fn=recorder,
        callbacks=[lambda s, m, metrics: seen.append((s, dict(metrics)))],
    )
    out = tmp_path / "run"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000006", "step_00000007"]  # step 2 and 4 pruned; no temporary dirs left
    assert result.last_checkpoint == out / "checkpoints" / "step_00000007"
    files = {p.name for p in result.last_checkpoint.iterdir()}
    assert {
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "state.safetensors",
        "state.json",
    } <= files
    tensors, state = load_training_state(result.last_checkpoint)
    assert state["step"] == 7 and state["scheduler"]["last_epoch"] == 7
    assert_same(load_file(str(result.last_checkpoint / "model.safetensors")), params(model))
    assert_same(prefixed(tensors, "ema"), recorder.ema)

    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["step", "loss", "lr", "grad_norm", "samples_per_s"]
        rows = list(reader)
    assert [int(r["step"]) for r in rows] == [3, 6, 7]
    for r in rows:  # lr of step s (1-based) is lr * warmup_cosine(s - 1), written out here by hand
        s = int(r["step"]) - 1
        mult = (s + 1) / 2 if s < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 5))
        assert float(r["lr"]) == pytest.approx(1e-2 * mult, rel=1e-5)
        assert float(r["samples_per_s"]) > 0 and float(r["loss"]) > 0
    assert list((out / "tb").glob("events.out.tfevents.*"))

    assert [s for s, _ in seen] == list(range(1, 8))
    assert all({"loss", "lr", "grad_norm"} <= m.keys() for _, m in seen)
    assert seen[0][1]["grad_norm"] > 0.05  # the logged norm is the one before clipping
    assert recorder.calls == [out / "model"] * 4  # at steps 2, 4, 6 and 7
    assert result.model_dir == out / "model"

    again = train(
        make_model(0), denoise_loss, make_dataset(), cfg, export_fn=recorder
    )  # already at max_steps
    assert again.step == 7 and again.losses == [] and len(recorder.calls) == 5
    assert_same(recorder.model, params(model))
    fresh = train(make_model(0), denoise_loss, make_dataset(), replace(cfg, max_steps=3), resume=False)
    assert fresh.step == 3 and len(fresh.losses) == 3  # started over, old checkpoints replaced
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    assert (out / "metrics.csv").read_text().splitlines()[1].startswith("3,")


def test_grad_clip_limits_the_update(tmp_path):
    """Adam's first update hides gradient scale, so look at the gradients the optimizer receives: clipped to
    max norm 1e-3, their global norm is 1e-3."""
    norms = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        )

    handle = register_optimizer_step_pre_hook(hook)
    try:
        train(make_model(0), denoise_loss, make_dataset(), config(tmp_path, max_steps=2, grad_clip=1e-3))
    finally:
        handle.remove()
    assert norms == pytest.approx([1e-3, 1e-3], rel=1e-4)


def test_label_dropout_replaces_labels_with_null_class(tmp_path):
    seen = []

    def loss_fn(model, x0, *, generator=None, class_labels=None):
        seen.append(class_labels.clone())
        return denoise_loss(model, x0, generator=generator, class_labels=class_labels)

    ds = make_dataset(n=24, labels=True)
    cfg = config(tmp_path, max_steps=12, batch_size=12, label_dropout=0.5, null_class=3)
    train(make_model(0, num_classes=3), loss_fn, ds, cfg)
    labels = torch.cat(seen)
    dropped = (labels == 3).float().mean()
    assert 0.3 < dropped < 0.7, dropped
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}

    seen.clear()
    train(
        make_model(0, num_classes=3),
        loss_fn,
        ds,
        replace(cfg, label_dropout=0.0, output_dir=str(tmp_path / "n")),
    )
    assert not (torch.cat(seen) == 3).any()


def test_bf16_autocast_on_cpu(tmp_path):
    modes = []

    def loss_fn(model, x0, *, generator=None):
        modes.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return denoise_loss(model, x0, generator=generator)

    model = make_model(0)
    result = train(model, loss_fn, make_dataset(), config(tmp_path, max_steps=3, mixed_precision="bf16"))
    assert result.step == 3 and all(math.isfinite(v) for v in result.losses)
    assert modes and all(m == (True, torch.bfloat16) for m in modes)
    assert model(torch.randn(2, 1, 16)).dtype == torch.float32  # autocast wrapper removed after training
    # the process-wide accelerate state switches back to full precision for the next run
    result = train(make_model(0), loss_fn, make_dataset(), config(tmp_path, "fp32", max_steps=1))
    assert modes[-1][0] is False


@pytest.mark.long
def test_two_processes_agree_with_one(tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo): both ranks end with identical weights, equal to a
    one-process run over the same global batches (2 micro-batches instead of 2 ranks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # accelerate 1.15 starts several CPU processes only through its multi-process (torchrun) launcher;
    # ACCELERATE_USE_CPU keeps them on CPU with the gloo backend even where GPUs exist
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(Path(__file__).with_name("dist_train_script.py")),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["step"] for i in info] == [5, 5] and [i["num_processes"] for i in info] == [2, 2]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert_same(rank0, rank1)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000005"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}

    model = make_model(0)
    cfg = TrainConfig(
        max_steps=5,
        batch_size=8,
        grad_accum_steps=2,
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=5,
        log_every=1,
        seed=7,
        output_dir=str(tmp_path / "single"),
        progress=False,
    )
    train(model, denoise_loss, make_dataset(), cfg)
    assert_same(rank0, params(model), atol=1e-6)
    assert not torch.equal(rank0["conv_in.weight"], params(make_model(0))["conv_in.weight"])


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_steps", 0, "max_steps must be an integer >= 1, got 0"),
        ("batch_size", -4, "batch_size must be an integer >= 1"),
        ("grad_accum_steps", 3, r"batch_size=8 must be divisible by grad_accum_steps \* num_processes = 3"),
        ("lr", 0.0, "lr must be > 0, got 0.0"),
        ("warmup_steps", -1, "warmup_steps must be an integer >= 0"),
        ("min_lr_ratio", 1.5, r"min_lr_ratio must be in \[0, 1\], got 1.5"),
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\), got 1.0"),
        ("mixed_precision", "fp8", r"mixed_precision must be one of \('no', 'bf16', 'fp16'\), got 'fp8'"),
        ("grad_clip", -1.0, "grad_clip must be >= 0"),
        ("adam_betas", (0.9, 1.0), "adam_betas must be two numbers in"),
        ("label_dropout", 1.0, r"label_dropout must be in \[0, 1\), got 1.0"),
        ("context_dropout", -0.1, r"context_dropout must be in \[0, 1\), got -0.1"),
        ("keep_checkpoints", 0, "keep_checkpoints must be an integer >= 1"),
        ("num_workers", -1, "num_workers must be an integer >= 0"),
    ],
)
def test_bad_config_raises(tmp_path, field, value, match):
    cfg = replace(config(tmp_path), **{field: value})
    with pytest.raises(ValueError, match=match):
        train(make_model(0), denoise_loss, make_dataset(), cfg)
    assert not (tmp_path / "run").exists()  # nothing written before validation


def test_bad_inputs_raise(tmp_path):
    cfg = config(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="dataset is empty"):
        train(make_model(0), denoise_loss, fixtures.DictDataset(torch.zeros(0, 1, 16)), cfg)
    with pytest.raises(ValueError, match=r"dataset items must be dicts \{'x'"):
        train(make_model(0), denoise_loss, torch.utils.data.TensorDataset(torch.zeros(4, 1, 16)), cfg)
    with pytest.raises(ValueError, match=r"per-sample loss of shape \(8,\), got \(\)"):
        train(make_model(0), lambda m, x, generator=None: denoise_loss(m, x).mean(), make_dataset(), cfg)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16.*needs a CUDA GPU"):
            train(make_model(0), denoise_loss, make_dataset(), replace(cfg, mixed_precision="fp16"))
