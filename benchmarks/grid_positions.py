"""The positions stage of a grid model on its own: how many generated point sets are exact lattices.

A set of generated positions is an exact lattice when rounding every node to the nearest integer point gives
each site of the ``rows x cols`` box exactly one node (the edge stage recovers a grid exactly on such
positions). Also reported: the median over graphs of the largest distance of a node from its site, and the
mean number of empty sites per graph (equal to the number of extra nodes on occupied ones), and the share of
sites left empty near the sides (fewer than ``--band`` sites from one) and deeper inside. Rows for each
sampler (``--samplers heun:32 pc:512``), start (``--starts stratified uniform``) and start noise
(``--sigma-max 3 1``), one model.

    python benchmarks/grid_positions.py --run runs/graph_grid --sizes 48 64 144 --num-graphs 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import machine_description, markdown_table, publish


def lattice_stats(
    pos: torch.Tensor, rows: int, cols: int, band: int = 3
) -> tuple[bool, float, int, int, int]:
    """(exact lattice?, largest distance to the nearest site, empty sites, empty sites fewer than ``band``
    sites from a side, empty sites deeper inside) for positions ``pos (n, 2)``."""
    site = pos.round()
    inside = (site[:, 0] >= 0) & (site[:, 0] < rows) & (site[:, 1] >= 0) & (site[:, 1] < cols)
    keys = (site[:, 0] * cols + site[:, 1])[inside].long()
    filled = torch.zeros(rows * cols, dtype=torch.bool)
    filled[keys] = True
    r, c = torch.arange(rows * cols) // cols, torch.arange(rows * cols) % cols
    depth = torch.minimum(torch.minimum(r, rows - 1 - r), torch.minimum(c, cols - 1 - c))  # (sites,)
    empty = int((~filled).sum())
    near = int((~filled & (depth < band)).sum())
    return empty == 0 and bool(inside.all()), float((pos - site).norm(dim=1).max()), empty, near, empty - near


def band_sites(rows: int, cols: int, band: int) -> tuple[int, int]:
    """Sites fewer than ``band`` from a side, and the others, of a ``rows x cols`` box."""
    deep = max(0, rows - 2 * band) * max(0, cols - 2 * band)
    return rows * cols - deep, deep


def positions_denoiser(args: argparse.Namespace):
    """The positions denoiser and config of ``args.run`` (torch set to ``args.threads`` threads)."""
    from polyscale.pipelines.graph_nets import position_denoiser
    from polyscale.pipelines.graph_sample import load_net

    torch.set_num_threads(args.threads)
    net, cfg = load_net(Path(args.run) / "positions" / "model", torch.device("cpu"))
    return position_denoiser(cfg.model, net), cfg


def main() -> None:
    from polyscale.data.graph_geometry import spatial_order
    from polyscale.diffusion.sampling import SamplerConfig
    from polyscale.diffusion.structure import sample_positions
    from polyscale.pipelines.graph_sample import sampling_domain

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="grid run directory (positions/model inside)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 144])
    ap.add_argument("--num-graphs", type=int, default=16)
    ap.add_argument("--samplers", nargs="+", default=["heun:32"], help="name:steps")
    ap.add_argument("--starts", nargs="+", default=[None], help="start points (default: the model's own)")
    ap.add_argument(
        "--sigma-max",
        type=float,
        nargs="+",
        default=[None],
        help="start noise levels (default: the model's positions.sampler.sigma_max)",
    )
    ap.add_argument(
        "--margins",
        type=float,
        nargs="+",
        default=[None],
        help="start margins (default: the model's positions.start_margin)",
    )
    ap.add_argument(
        "--churn",
        nargs="+",
        default=[None],
        help="Heun churn rows as S_CHURN:S_TMIN:S_TMAX (Karras et al. 2022, Alg. 2; default: none)",
    )
    ap.add_argument(
        "--band", type=int, default=3, help="sites fewer than this from a side count as the border"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    den, cfg = positions_denoiser(args)
    rows_out = []
    for spec in args.samplers:
        sampler, steps = spec.split(":")
        for start, sigma_max, churn, margin in [
            (a, b, c, m)
            for a in args.starts
            for b in args.sigma_max
            for c in args.churn
            for m in args.margins
        ]:
            margin = cfg.diffusion.positions.start_margin if margin is None else margin
            options = {}
            if churn:
                s_churn, s_tmin, s_tmax = (float(v) for v in churn.split(":"))
                options = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax}
            start = start or cfg.diffusion.positions.start
            sigma_max = sigma_max or cfg.diffusion.positions.sampler.sigma_max
            for size in args.sizes:
                rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
                exact, worst, empty, t0 = 0, [], [], time.perf_counter()
                near = deep = near_sites = deep_sites = 0
                for _ in range(args.num_graphs):
                    n, box = sampling_domain("grid", size, rng=rng)
                    run_with = SamplerConfig(sampler, int(steps), sigma_max=sigma_max, options=options)
                    pos = sample_positions(den, n, run_with, box=box, start=start, start_margin=margin,
                                           order=spatial_order, generator=gen)  # fmt: skip
                    rows, cols = int(box[0]) + 1, int(box[1]) + 1
                    ok, dist, holes, h_near, h_deep = lattice_stats(pos, rows, cols, args.band)
                    exact, worst, empty = exact + ok, worst + [dist], empty + [holes]
                    s_near, s_deep = band_sites(rows, cols, args.band)
                    near, deep, near_sites, deep_sites = (
                        near + h_near,
                        deep + h_deep,
                        near_sites + s_near,
                        deep_sites + s_deep,
                    )
                rows_out.append({
                    "nodes": size, "sampler": spec, "churn": churn or "-", "start": start, "margin": margin,
                    "sigma max": sigma_max,
                    "graphs": args.num_graphs,
                    "exact lattice": exact / args.num_graphs, "median max |p - site|": float(np.median(worst)),
                    "empty sites per graph": float(np.mean(empty)),
                    f"% empty, < {args.band} from a side": 100 * near / max(near_sites, 1),
                    "% empty, deeper": 100 * deep / deep_sites if deep_sites else float("nan"),
                    "s per graph": (time.perf_counter() - t0) / args.num_graphs,
                })  # fmt: skip
                print(rows_out[-1], flush=True)
    text = (f"Machine: {machine_description()}. Model: `{args.run}`.\n\n"
            + markdown_table(rows_out))  # fmt: skip
    publish(text, args.out)


if __name__ == "__main__":
    main()
