"""Training-step throughput of our 2D U-Net against diffusers' ``UNet2DModel`` of the same layout.

One step = forward + MSE loss against a fixed random target + backward + AdamW step, on 32x32 RGB batches.
Both networks are ADM-style with identical layout (tests/test_unet.py proves that, given the same weights and
a window covering the whole grid, they compute the same function), so the parameter counts are equal:

* ours: ``UNet(dims=2, in_channels=3, base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
  attention_levels=(1,), attention_kernel_sizes=(7,), num_heads=4)``: 7x7 neighbourhood attention at level 1
  (16x16 grid), none in the middle (level 2 is not an attention level).
* diffusers: ``UNet2DModel(block_out_channels=(64, 128, 128), layers_per_block=2,
  down_block_types=(DownBlock2D, AttnDownBlock2D, DownBlock2D), up_block_types=(UpBlock2D, AttnUpBlock2D,
  UpBlock2D), add_attention=False, attention_head_dim=32, norm_num_groups=8,
  resnet_time_scale_shift="scale_shift")``: global attention with 4 heads of 32 channels at the same level.

A second pair drops attention on both sides (``attention_levels=()`` / plain blocks) to separate the cost of
the residual trunk from the cost of attention. Timed steps alternate between the two models in rounds, so
machine load drifts hit both alike; throughput comes from the median round. Peak memory of one training step
above what was resident before it: CUDA ``max_memory_allocated``, on CPU (Linux) the peak RSS (``VmHWM``,
reset through ``/proc/self/clear_refs``).

Run: ``python benchmarks/bench_unet.py --out file.md`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch
from torch import nn

from polyscale.nn.unet import UNet

try:
    from benchmarks.common import machine_description, markdown_table, publish
except ImportError:  # run as a script from the repository root or the benchmarks folder
    from common import machine_description, markdown_table, publish

SIZE, CHANNELS = 32, 3


class DiffusersAdapter(nn.Module):
    """``UNet2DModel`` behind our call signature: ``(x, c_noise) -> prediction`` (timestep = 100 c_noise)."""

    def __init__(self, attention: bool) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        middle = "AttnDownBlock2D" if attention else "DownBlock2D"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.net = UNet2DModel(
                sample_size=SIZE,
                in_channels=CHANNELS,
                out_channels=CHANNELS,
                block_out_channels=(64, 128, 128),
                layers_per_block=2,
                down_block_types=("DownBlock2D", middle, "DownBlock2D"),
                up_block_types=("UpBlock2D", middle.replace("Down", "Up"), "UpBlock2D"),
                add_attention=False,
                attention_head_dim=32,
                norm_num_groups=8,
                resnet_time_scale_shift="scale_shift",
            )

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.net(x, 100 * c_noise).sample


def build(kind: str, attention: bool) -> nn.Module:
    """The network named ``kind`` ("ours" or "diffusers"), with or without attention at level 1."""
    if kind == "diffusers":
        return DiffusersAdapter(attention)
    return UNet(
        dims=2,
        in_channels=CHANNELS,
        base_channels=64,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=(1,) if attention else (),
        attention_kernel_sizes=(7,) if attention else (),
        num_heads=4,
    )


class Trainer:
    """One model, its AdamW optimiser and a fixed batch; ``step()`` runs one training step."""

    def __init__(self, kind: str, attention: bool, batch: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.kind, self.attention, self.batch = kind, attention, batch
        self.model = build(kind, attention).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.x, self.target, self.c = (
            t.to(device)
            for t in (
                torch.randn(batch, CHANNELS, SIZE, SIZE, generator=g),
                torch.randn(batch, CHANNELS, SIZE, SIZE, generator=g),
                torch.randn(batch, generator=g) / 4,  # c_noise = log(sigma) / 4 for sigma ~ exp(N(0, 1))
            )
        )
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(self.model(self.x, self.c), self.target)
        loss.backward()
        self.opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _cpu_peak_mib(kind: str, attention: bool, batch: int) -> float:
    """Run in a fresh process: peak RSS of two training steps above the RSS before them (Linux only)."""
    trainer = Trainer(kind, attention, batch, torch.device("cpu"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS, forgetting import-time peaks
    base = _rss_kib("VmRSS")
    for _ in range(2):
        trainer.step()
    return (_rss_kib("VmHWM") - base) / 1024


def peak_step_memory_mib(trainer: Trainer, device: torch.device) -> float:
    """Peak memory of training steps above what was resident before them (MiB); NaN where unmeasurable.

    CUDA: ``max_memory_allocated`` over one step of the warm model. CPU: a fresh process (a warm one keeps
    freed memory resident, hiding the peak) measuring RSS over its first two steps, optimiser state included.
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        trainer.step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_cpu_peak_mib, trainer.kind, trainer.attention, trainer.batch).result()
    except (OSError, StopIteration):
        return float("nan")


def compare(
    attention: bool, device: torch.device, *, batch: int, warmup: int, rounds: int, steps: int
) -> dict:
    """Time both models in alternating rounds of ``steps`` steps; return one table row."""
    trainers = {kind: Trainer(kind, attention, batch, device) for kind in ("ours", "diffusers")}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()
    peak_mib = {kind: peak_step_memory_mib(trainer, device) for kind, trainer in trainers.items()}
    times: dict[str, list[float]] = {kind: [] for kind in trainers}
    for _ in range(rounds):
        for kind, trainer in trainers.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.step()
            _sync(device)
            times[kind].append(time.perf_counter() - t0)
    rate = {kind: batch * steps / statistics.median(t) for kind, t in times.items()}
    return {
        "device": device.type,
        "attention": "level 1 (ours 7x7 window, diffusers global)" if attention else "none",
        "batch": batch,
        "params_ours": trainers["ours"].params,
        "params_diffusers": trainers["diffusers"].params,
        "ours_samples_per_s": rate["ours"],
        "diffusers_samples_per_s": rate["diffusers"],
        "ratio_ours_over_diffusers": rate["ours"] / rate["diffusers"],
        "peak_step_MiB_ours": peak_mib["ours"],
        "peak_step_MiB_diffusers": peak_mib["diffusers"],
    }


def run(quick: bool = False) -> list[dict]:
    """Rows of the comparison table: CPU always, CUDA too when available."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        if quick:
            settings = dict(batch=4, warmup=1, rounds=3, steps=1)
        elif device.type == "cuda":
            settings = dict(batch=128, warmup=5, rounds=5, steps=10)
        else:
            settings = dict(batch=16, warmup=2, rounds=7, steps=1)
        for attention in (True, False):
            row = compare(attention, device, **settings)
            if abs(row["params_ours"] / row["params_diffusers"] - 1) > 0.1:
                raise RuntimeError(f"parameter counts differ by more than 10%: {row}")
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny batch and few steps (smoke run)")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    args = parser.parse_args()
    text = (
        "## U-Net training step: polyscale UNet vs diffusers UNet2DModel (2D, 32x32x3)\n\n"
        f"Machine: {machine_description()}\n\n{markdown_table(run(args.quick))}"
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
