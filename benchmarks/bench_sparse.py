"""``SparseLinear`` forward + backward: masked dense vs ``torch.sparse``, against ``nn.Linear``.

    python benchmarks/bench_sparse.py --out /tmp/sparse.md

One layer ``in = out = --features`` (default 2048), batch ``--batch`` (256), float32, at densities from 0.01 %
to 50 %. Time: median of ``--repeats`` forward + backward passes (loss ``y.sum()``), after one warm-up.
Memory: "stored" is the parameters and buffers (values + int64 positions for ours); "peak RSS" is each case's
own process's peak RSS minus its RSS after building the layer and the input (coarse: the allocator reuses
pages, so small transients read as 0).
The crossover is the lowest measured density at which the masked path is faster than the sparse one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, markdown_table, peak_rss_mib, publish  # noqa: E402

DENSITIES = [1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.05, 0.1, 0.2, 0.5]


def run_case(method: str, density: float, features: int, batch: int, repeats: int) -> dict:
    import torch
    from torch import nn

    from polyscale.nn.sparse import SparseLinear

    torch.manual_seed(0)
    if method == "nn.Linear":
        layer = nn.Linear(features, features)
    else:
        layer = SparseLinear(
            features,
            features,
            density=density,
            mode=method,
            min_inputs=0,
            generator=torch.Generator().manual_seed(0),
        )
    x = torch.randn(batch, features, requires_grad=True)
    base = peak_rss_mib()

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    stored = sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])
    return {
        "ms": 1000 * statistics.median(times),
        "peak_mib": peak_rss_mib() - base,
        "stored_mib": stored / 2**20,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        import torch

        torch.set_num_threads(int(sys.argv[7]))
        res = run_case(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        print(json.dumps(res))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    def measure(method: str, density: float) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "worker",
            method,
            str(density),
            str(args.features),
            str(args.batch),
            str(args.repeats),
            str(args.threads),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    dense = measure("nn.Linear", 1.0)
    rows, crossover = [], None
    for density in DENSITIES:
        masked, sparse = measure("masked", density), measure("sparse", density)
        if crossover is None and masked["ms"] < sparse["ms"]:
            crossover = density
        rows.append(
            {
                "density": f"{100 * density:g} %",
                "masked ms": masked["ms"],
                "sparse ms": sparse["ms"],
                "nn.Linear ms": dense["ms"],
                "nn.Linear / masked": dense["ms"] / masked["ms"],
                "nn.Linear / sparse": dense["ms"] / sparse["ms"],
                "stored MiB ours": masked["stored_mib"],
                "stored MiB nn.Linear": dense["stored_mib"],
                "peak RSS MiB masked": masked["peak_mib"],
                "sparse": sparse["peak_mib"],
                "nn.Linear": dense["peak_mib"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    head = (
        f"Machine: {machine_description().rsplit(';', 1)[0]}; {args.threads} threads\n\n"
        f"Layer {args.features} x {args.features}, batch {args.batch}, float32, forward + backward, median of "
        f"{args.repeats}. Crossover (lowest density where masked beats sparse): "
        f"{'none up to 50 %' if crossover is None else f'{100 * crossover:g} %'}.\n\n"
    )
    publish(head + markdown_table(rows), args.out)


if __name__ == "__main__":
    main()
