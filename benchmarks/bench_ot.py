"""Entropic OT at scale: our kernel operators against POT and GeomLoss, in one run.

    python benchmarks/bench_ot.py points --out /tmp/ot_points.md   # n in {1k, 10k, 100k}, d in {2, 3, 64}
    python benchmarks/bench_ot.py grids --out /tmp/ot_grids.md     # 128^2, 256^2, 512^2, 64^3

Every case runs in its own process (its own peak memory: peak RSS minus the RSS after imports and data).
Point clouds: x ~ U[0, 1]^d, y ~ U[0, 1]^d shifted by 0.25 along the first axis, uniform weights,
``epsilon = 0.05 E|x - y|^2`` (the same regime at every d). Peers get the same kernel
``exp(-|x - y|^2 / epsilon)``: POT ``reg = epsilon``, GeomLoss ``p=2`` (cost ``|x - y|^2 / 2``) with
``blur = sqrt(epsilon / 2)``. Stopping: ours at L1 row-marginal error 1e-4, POT at ``stopThr = 1e-4`` (its L2
column-marginal error, the looser of the two), GeomLoss at its own epsilon-scaling schedule (one iteration per
stage; ``scaling=0.5``, its default, and 0.9). At most 2,000 iterations for everyone. The OT cost is the
transport cost ``<pi, C>`` of each method's plan; its error is relative to our Dense operator in float64 at
tolerance 1e-7 (the "exact" value), where that fits. Grids: two smooth densities on ``linspace(0, 1, N)`` per
axis; our log path is the reference (it equals Dense on grid points, tests/test_ot.py).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, markdown_table, peak_rss_mib, publish  # noqa: E402

TOL = 1e-4
RANK = 1024
POINT_METHODS = [
    "exact",
    "dense",
    "random_features",
    "nystrom",
    "pot_sinkhorn",
    "pot_sinkhorn_log",
    "pot_nystrom",
    "geomloss",
    "geomloss_0.9",
]
DENSE_ONLY = {
    "exact",
    "dense",
    "pot_sinkhorn",
    "pot_sinkhorn_log",
    "geomloss",
    "geomloss_0.9",
}  # need n x m memory


def points(n: int, d: int, factor: float = 0.05):
    import torch

    g = torch.Generator().manual_seed(1000 * d + n % 997)
    x = torch.rand(n, d, generator=g)
    y = torch.rand(n, d, generator=g)
    y[:, 0] += 0.25
    eps = factor * (d / 6 + 0.0625)  # E|x - y|^2 = d / 6 + 0.25^2
    return x, y, eps


def dense_cost(x, y, f, g, eps, block=1024):
    """``<pi, C>`` of ``pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` (uniform weights), blockwise, float64."""
    from polyscale.ot.kernels import squared_distances

    x, y, f, g = x.double(), y.double(), f.double(), g.double()
    n, m = len(x), len(y)
    total = 0.0
    for s in range(0, n, block):
        c = squared_distances(x[None, s : s + block], y[None])[0]
        pi = ((f[s : s + block, None] + g[None] - c) / eps).exp() / (n * m)
        total += float((pi * c).sum())
    return total


def run_point_case(method: str, n: int, d: int, factor: float = 0.05) -> dict:
    import numpy as np
    import torch

    from polyscale.ot import Dense, Nystrom, RandomFeatures, sinkhorn

    x, y, eps = points(n, d, factor)
    base = peak_rss_mib()
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    out: dict = {}
    if method in ("exact", "dense", "random_features", "nystrom"):
        if method == "exact":
            op, tol = Dense(x.double(), y.double(), eps), 1e-7
        elif method == "dense":
            op, tol = Dense(x, y, eps), TOL
        elif method == "random_features":
            op, tol = RandomFeatures(x, y, eps, rank=RANK, generator=gen), TOL
        else:
            op, tol = Nystrom(x, y, eps, rank=RANK, generator=gen), TOL
        r = sinkhorn(op, tol=tol, max_iter=2000, warn=False)
        seconds = time.perf_counter() - t0
        out = {"iterations": r.iterations, "converged": r.converged, "cost": float(r.cost)}
    elif method.startswith("pot"):
        import ot

        xn, yn = x.double().numpy(), y.double().numpy()
        a = np.full(n, 1.0 / n)
        if method == "pot_nystrom":
            loss, log = ot.bregman.empirical_sinkhorn_nystroem2(
                xn,
                yn,
                reg=eps,
                anchors=RANK,
                numItermax=2000,
                stopThr=TOL,
                log=True,
                random_state=0,
                warn=False,
            )
            seconds = time.perf_counter() - t0
            out = {"iterations": int(log.get("niter", -1)), "cost": float(loss)}
        else:
            m = ot.dist(xn, yn)  # squared Euclidean
            solve = ot.sinkhorn if method == "pot_sinkhorn" else ot.bregman.sinkhorn_log
            plan, log = solve(a, a, m, eps, numItermax=2000, stopThr=TOL, log=True, warn=False)
            seconds = time.perf_counter() - t0
            out = {"iterations": int(log["niter"]), "cost": float((plan * m).sum())}
    elif method.startswith("geomloss"):
        from geomloss import SamplesLoss

        scaling = 0.9 if method.endswith("0.9") else 0.5
        loss = SamplesLoss(
            "sinkhorn",
            p=2,
            blur=math.sqrt(eps / 2),
            debias=False,
            potentials=True,
            backend="tensorized",
            scaling=scaling,
        )
        f, g = loss(x, y)  # potentials for the cost |x - y|^2 / 2 at epsilon / 2: twice them are ours
        seconds = time.perf_counter() - t0
        out = {"iterations": "schedule", "cost": dense_cost(x, y, 2 * f.reshape(-1), 2 * g.reshape(-1), eps)}
    else:
        raise ValueError(method)
    out.update(seconds=seconds, peak_mib=peak_rss_mib() - base)
    return out


def grid_fields(shape):
    """Two smooth positive densities on the grid (sums of three Gaussian bumps each), flattened."""
    import torch

    g = torch.Generator().manual_seed(sum(shape))
    axes = torch.meshgrid(*[torch.linspace(0, 1, s, dtype=torch.float64) for s in shape], indexing="ij")
    fields = []
    for _ in range(2):
        f = torch.full(shape, 1e-3, dtype=torch.float64)
        for _ in range(3):
            c = torch.rand(len(shape), generator=g, dtype=torch.float64) * 0.6 + 0.2
            f = f + torch.exp(-sum((ax - ci) ** 2 for ax, ci in zip(axes, c, strict=True)) / 0.01)
        fields.append((f / f.sum()).flatten())
    return fields


def pot_grid_sinkhorn(a, b, shape, eps, log_domain, max_iter=5000):
    """Sinkhorn with POT's separable convolutional kernel (``ot.bregman._convolutional._get_convol_img_fn``, 2D),
    same stopping rule as ours (L1 row-marginal error)."""
    import numpy as np
    from ot.backend import get_backend
    from ot.bregman._convolutional import _get_convol_img_fn

    nx = get_backend(a.numpy())
    w, h = shape
    conv = _get_convol_img_fn(nx, w, h, eps, a.numpy(), log_domain=log_domain)
    # the exp-domain kernel takes a stack (k, w, h), the log-domain one a single image (w, h)
    A, B = (
        (a.numpy().reshape(1, w, h), b.numpy().reshape(1, w, h))
        if not log_domain
        else (a.numpy().reshape(w, h), b.numpy().reshape(w, h))
    )

    if log_domain:
        la, lb = np.log(A), np.log(B)
        lu, lv = np.zeros_like(A), np.zeros_like(B)
        for it in range(1, max_iter + 1):  # noqa: B007 (returned)
            lu = la - conv(lv)
            lv = lb - conv(lu)
            err = np.abs(np.exp(lu + conv(lv)) - A).sum()
            if err <= TOL:
                break
        return it, err
    u, v = np.ones_like(A), np.ones_like(B)
    for it in range(1, max_iter + 1):  # noqa: B007 (returned)
        u = A / conv(v)
        v = B / conv(u)
        err = np.abs(u * conv(v) - A).sum()
        if not np.isfinite(err) or err <= TOL:
            break
    return it, err


def run_grid_case(method: str, shape: tuple, eps: float) -> dict:

    from polyscale.ot import Grid, sinkhorn

    a, b = grid_fields(shape)
    if method.startswith("pot"):
        import ot.bregman._convolutional  # noqa: F401  (import time is not solve time)
    base = peak_rss_mib()
    t0 = time.perf_counter()
    if method in ("fft", "log", "matmul"):
        r = sinkhorn(Grid(shape, eps, backend=method), a, b, tol=TOL, max_iter=5000, warn=False)
        seconds = time.perf_counter() - t0
        out = {
            "iterations": r.iterations,
            "converged": r.converged,
            "cost": float(r.cost),
            "error": float(r.marginal_error),
        }
    else:
        it, err = pot_grid_sinkhorn(a, b, shape, eps, log_domain=method == "pot_log")
        seconds = time.perf_counter() - t0
        out = {"iterations": it, "converged": bool(err <= TOL), "error": float(err)}
    out.update(seconds=seconds, peak_mib=peak_rss_mib() - base)
    return out


def worker(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "worker", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout {timeout:.0f} s"}
    if res.returncode != 0:
        return {"status": "error: " + res.stderr.strip().splitlines()[-1][:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(row: dict, args: list[str], timeout: float, reference: float | None, is_reference: bool):
    """Run one case into ``row``, with its cost error against ``reference``; returns the reference cost (this
    case's when ``is_reference``)."""
    res = worker(args, timeout)
    row.update(res)
    if is_reference and "cost" in res:
        reference = res["cost"]
    elif reference is not None and "cost" in res:
        row["cost error"] = abs(res["cost"] - reference) / abs(reference)
    print(json.dumps(row), flush=True)
    return reference


def bench_points(sizes, dims, timeout, methods=POINT_METHODS, factor=0.05) -> str:
    rows = []
    for d in dims:
        for n in sizes:
            exact = None
            for method in methods:
                row = {"n": n, "d": d, "method": method}
                if method in DENSE_ONLY and n > 10_000:
                    row["status"] = (
                        "not run: blockwise Dense fits (O(n) memory) but applies 10^10 kernel entries per half-step"
                        if method in ("exact", "dense")
                        else "does not fit: needs the full n x m matrix (80 GB in float64)"
                    )
                    rows.append(row)
                    continue
                exact = measure(
                    row, ["points", method, str(n), str(d), str(factor)], timeout, exact, method == "exact"
                )
                rows.append(row)
    cols = [
        "n",
        "d",
        "method",
        "seconds",
        "peak_mib",
        "iterations",
        "converged",
        "cost",
        "cost error",
        "status",
    ]
    return markdown_table(rows, cols)


GRID_METHODS = ["log", "fft", "matmul", "pot_exp", "pot_log"]


def bench_grids(timeout, only: list[str] | None = None, methods: list[str] = GRID_METHODS) -> str:
    rows = []
    cases = [
        ((128, 128), 0.1),
        ((256, 256), 0.1),
        ((512, 512), 0.1),
        ((64, 64, 64), 0.15),
        ((128, 128), 2e-3),
        ((256, 256), 2e-3),
        ((512, 512), 2e-3),
        ((64, 64, 64), 3e-3),
    ]
    if only:  # "512x512:0.002" entries
        cases = [c for c in cases if f"{'x'.join(map(str, c[0]))}:{c[1]:g}" in only]
    for shape, eps in cases:
        ref = None
        for method in methods:
            row = {"grid": "x".join(map(str, shape)), "epsilon": eps, "method": method}
            if method.startswith("pot") and len(shape) == 3:
                row["status"] = "POT's convolutional kernel is 2D only"
                rows.append(row)
                continue
            if method == "fft" and sum(1.0 for _ in shape) / eps > 20:
                row["status"] = "refused by the guard (diameter^2 / epsilon > 20)"
                rows.append(row)
                continue
            # reference: the exact log path; the matmul path (equal to it, tests/test_ot.py) if that timed out
            is_ref = ref is None and method in ("log", "matmul")
            ref = measure(row, ["grids", method, "x".join(map(str, shape)), str(eps)], timeout, ref, is_ref)
            rows.append(row)
    cols = [
        "grid",
        "epsilon",
        "method",
        "seconds",
        "peak_mib",
        "iterations",
        "converged",
        "error",
        "cost",
        "cost error",
        "status",
    ]
    return markdown_table(rows, cols)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        import torch

        torch.set_num_threads(2)
        kind, method = sys.argv[2], sys.argv[3]
        if kind == "points":
            factor = float(sys.argv[6]) if len(sys.argv) > 6 else 0.05
            res = run_point_case(method, int(sys.argv[4]), int(sys.argv[5]), factor)
        else:
            res = run_grid_case(method, tuple(int(s) for s in sys.argv[4].split("x")), float(sys.argv[5]))
        print(json.dumps(res))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["points", "grids"])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3, 64])
    p.add_argument("--timeout", type=float, default=600, help="seconds per case")
    p.add_argument("--methods", nargs="+", default=POINT_METHODS, choices=POINT_METHODS)
    p.add_argument("--cases", nargs="+", default=None, help="grid cases to run, e.g. 512x512:0.002")
    p.add_argument("--grid-methods", nargs="+", default=GRID_METHODS, choices=GRID_METHODS)
    p.add_argument("--eps-factor", type=float, default=0.05, help="epsilon = factor * E|x - y|^2")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    head = f"Machine: {machine_description()}\n\n"
    table = (
        bench_points(args.sizes, args.dims, args.timeout, args.methods, args.eps_factor)
        if args.what == "points"
        else bench_grids(args.timeout, args.cases, args.grid_methods)
    )
    publish(head + table, args.out)


if __name__ == "__main__":
    main()
