"""Sampler overhead: the share of sampling wall time spent outside the denoiser (our bookkeeping).

Each sampler drives the same U-Net denoiser; a wrapper times every denoiser call. Overhead = 1 - denoiser time /
total time. The peer is the denoiser itself: an ideal sampler would have overhead 0.
"""

from __future__ import annotations

import argparse
import time

import torch

from polyscale.diffusion import EDMPrecond, get_sampler, sigmas_karras
from polyscale.nn.unet import UNet

try:
    from benchmarks.common import machine_description, markdown_table, publish
except ImportError:  # run as a script from the benchmarks folder
    from common import machine_description, markdown_table, publish


class TimedDenoiser(torch.nn.Module):
    """Counts calls and accumulates wall time spent inside the wrapped denoiser."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.seconds = 0.0

    def forward(self, x, sigma, **cond):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.inner(x, sigma, **cond)
        if x.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


SAMPLERS = ["ddpm", "ddim", "euler", "heun", "dpmpp2m", "pc", "ode", "ode_adaptive"]


def run(quick: bool = False) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = UNet(
        dims=2,
        in_channels=1,
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention_levels=(1,),
        attention_kernel_sizes=(5,),
    )
    denoiser = EDMPrecond(net).to(device).eval()
    batch, size, steps = (8, 16, 10) if quick else (16, 32, 24)
    sigmas = sigmas_karras(steps, 0.002, 80.0, device=device)
    rows = []
    for name in SAMPLERS:
        timed = TimedDenoiser(denoiser)
        gen = torch.Generator(device).manual_seed(0)
        x = torch.randn(batch, 1, size, size, generator=gen, device=device) * sigmas[0]
        with torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            get_sampler(name)(timed, x, sigmas, generator=gen, disable=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            total = time.perf_counter() - t0
        rows.append(
            {
                "sampler": name,
                "device": device.type,
                "NFE": timed.calls,
                "total_s": total,
                "denoiser_s": timed.seconds,
                "overhead_share": 1.0 - timed.seconds / total,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    table = markdown_table(run(args.quick))
    text = f"Machine: {machine_description()}\n\n{table}"
    publish(text, args.out)


if __name__ == "__main__":
    main()
