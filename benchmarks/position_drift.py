"""How far a grid positions denoiser's mean estimate strays from the posterior mean, by depth and noise level.

Real ``rows x cols`` lattices are noised at each sigma and denoised once. For every node the displacement is
projected on the inward normal of the side nearest to its noisy position, and binned by that side distance
(the depth). The mean of ``(D(x_t) - x_0) . n`` over a bin is the model's mean error there: by the tower
property the target ``x_0`` averages to the posterior mean ``E[x_0 | x_t]`` over any bin of ``x_t``, so the
ideal denoiser scores 0 up to the standard error shown. A positive value is a pull toward the middle.

``--check-sizes`` then samples positions (Heun 32 with the model's own start, margin and churn, or
``--margin`` / ``--churn``) with and without
the measured mean error subtracted, and counts empty sites as ``grid_positions.py`` does: whether a drift of
that size is what leaves the holes.

    python benchmarks/position_drift.py --run runs/graph_grid --shape 12 12 --draws 100
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import machine_description, markdown_table, publish
from grid_positions import lattice_stats, positions_denoiser

SIGMAS = (3.0, 2.0, 1.4, 1.0, 0.7, 0.5, 0.3, 0.15, 0.07, 0.03)
DEPTH_EDGES = (0.0, 1.0, 2.0, 3.0, 5.0)  # bins: < 0 (outside), [0, 1), ..., [3, 5), >= 5
NORMALS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def nearest_side(pos: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of each point of ``pos (n, 2)`` to the nearest side of ``[0, W] x [0, H]`` and that side's
    inward normal ``(n, 2)``."""
    dist = torch.stack([pos[:, 0], box[0] - pos[:, 0], pos[:, 1], box[1] - pos[:, 1]], dim=1)
    side = dist.argmin(dim=1)
    return dist.gather(1, side[:, None])[:, 0], NORMALS[side]


def depth_bin(depth: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(depth, torch.tensor(DEPTH_EDGES), right=True)  # 0 .. len(DEPTH_EDGES)


def measure(den, rows: int, cols: int, draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean inward error and its standard error, ``(len(SIGMAS), bins)`` each."""
    from polyscale.diffusion.graph import GraphLayout

    r, c = np.divmod(np.arange(rows * cols), cols)
    x0 = torch.tensor(np.stack([r, c], axis=1), dtype=torch.float32)
    n, box = len(x0), torch.tensor([rows - 1.0, cols - 1.0])
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    bins = len(DEPTH_EDGES) + 1
    mean, se = np.zeros((len(SIGMAS), bins)), np.zeros((len(SIGMAS), bins))
    gen = torch.Generator().manual_seed(seed)
    for i, sigma in enumerate(SIGMAS):
        values, where = [], []
        for _ in range(draws):
            xt = x0 + sigma * torch.randn(n, 2, generator=gen)
            with torch.no_grad():
                d = den(xt.reshape(-1, 1), torch.tensor(sigma), layout=layout, box=box[None]).view(n, 2)
            depth, normal = nearest_side(xt, box)
            values.append(((d - x0) * normal).sum(dim=1))
            where.append(depth_bin(depth))
        v, k = torch.cat(values).numpy(), torch.cat(where).numpy()
        for b in range(bins):
            sel = v[k == b]
            if len(sel) > 30:
                mean[i, b], se[i, b] = sel.mean(), sel.std() / np.sqrt(len(sel))
    return mean, se


class DriftCorrected(torch.nn.Module):
    """``den`` with a measured mean inward error (``table (len(SIGMAS), bins)``, interpolated in log sigma)
    subtracted along each node's nearest-side normal; zero from depth 5 on."""

    def __init__(self, den, table: np.ndarray) -> None:
        super().__init__()
        self.den = den
        table = table.copy()
        table[:, -1] = 0.0
        order = np.argsort(SIGMAS)
        self.log_sigma = np.log(np.asarray(SIGMAS)[order])
        self.table = torch.tensor(table[order], dtype=torch.float32)

    def forward(self, x, sigma, *, layout, box, **kwargs):
        out = self.den(x, sigma, layout=layout, box=box, **kwargs)
        s = float(np.clip(np.log(float(torch.as_tensor(sigma).reshape(-1)[0])), *self.log_sigma[[0, -1]]))
        j = min(int(np.searchsorted(self.log_sigma, s, side="right")) - 1, len(self.log_sigma) - 2)
        w = (s - self.log_sigma[j]) / (self.log_sigma[j + 1] - self.log_sigma[j])
        row = (1 - w) * self.table[j] + w * self.table[j + 1]  # (bins,)
        depth, normal = nearest_side(x.view(-1, 2), box[0])
        return out - (row[depth_bin(depth)][:, None] * normal).reshape(-1, 1)


def main() -> None:
    from polyscale.data.graph_geometry import spatial_order
    from polyscale.diffusion.sampling import SamplerConfig
    from polyscale.diffusion.structure import sample_positions
    from polyscale.pipelines.graph_sample import sampling_domain

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="grid run directory (positions/model inside)")
    ap.add_argument("--shape", type=int, nargs=2, default=[12, 12], metavar=("ROWS", "COLS"))
    ap.add_argument("--draws", type=int, default=100, help="noise draws per sigma")
    ap.add_argument("--check-sizes", type=int, nargs="*", default=[], help="sample at these sizes too")
    ap.add_argument("--num-graphs", type=int, nargs="*", default=[16], help="graphs per checked size")
    ap.add_argument("--margin", type=float, default=None, help="start margin (default: the model's)")
    ap.add_argument("--churn", default=None, help="S_CHURN:S_TMIN:S_TMAX (default: the model's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    den, cfg = positions_denoiser(args)
    rows, cols = args.shape
    mean, se = measure(den, rows, cols, args.draws)
    inner = [f"{a:g}-{b:g}" for a, b in zip(DEPTH_EDGES, DEPTH_EDGES[1:], strict=False)]
    names = ["outside", *inner, f">= {DEPTH_EDGES[-1]:g}"]
    table = []
    for i, s in enumerate(SIGMAS):
        cells = {f"depth {k}": f"{m:+.3f} ({e:.3f})" for k, m, e in zip(names, mean[i], se[i], strict=True)}
        table.append({"sigma": s, **cells})
    text = (f"Machine: {machine_description()}. Model: `{args.run}`, {rows} x {cols} lattice, {args.draws} draws "
            "per sigma. Mean inward error (standard error):\n\n" + markdown_table(table))  # fmt: skip
    diff = cfg.diffusion
    options = dict(diff.positions.sampler.options)
    if args.churn:
        options = dict(
            zip(("s_churn", "s_tmin", "s_tmax"), (float(v) for v in args.churn.split(":")), strict=False)
        )
    margin = diff.positions.start_margin if args.margin is None else args.margin
    counts = []
    per_size = args.num_graphs * len(args.check_sizes) if len(args.num_graphs) == 1 else args.num_graphs
    for size, graphs in zip(args.check_sizes, per_size, strict=False):
        for name, model in (("as trained", den), ("mean error subtracted", DriftCorrected(den, mean))):
            rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
            empty, exact = [], 0
            for _ in range(graphs):
                n, box = sampling_domain("grid", size, rng=rng)
                heun = SamplerConfig("heun", 32, sigma_max=diff.positions.sampler.sigma_max, options=options)
                pos = sample_positions(model, n, heun, box=box, start=diff.positions.start, start_margin=margin,
                                       order=spatial_order, generator=gen)  # fmt: skip
                ok, _, holes, _, _ = lattice_stats(pos, int(box[0]) + 1, int(box[1]) + 1)
                empty, exact = empty + [holes], exact + ok
            counts.append({"nodes": size, "graphs": graphs, "denoiser": name,
                           "empty sites per graph": float(np.mean(empty)),
                           "exact lattice": exact / graphs})  # fmt: skip
            print(counts[-1], flush=True)
    if counts:
        text += f"\nEmpty sites, Heun 32, start margin {margin:g}, churn {options}:\n\n" + markdown_table(
            counts
        )
    publish(text, args.out)


if __name__ == "__main__":
    main()
