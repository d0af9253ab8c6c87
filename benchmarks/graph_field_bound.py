"""How far a local feature model can get: the ideal denoisers of the grid fields, run through the same sampler.

The smooth fields of the feature presets are Gaussian with a known covariance ``Sigma``
(:func:`polyscale.data.graphs.field_covariance`), so at noise ``sigma`` the ideal denoiser is the linear map
``Sigma (Sigma + sigma^2 I)^-1``. A model of ``L`` message-passing layers reads ``L`` hops; the best it can do
with linear weights is, per node, the optimal linear estimate from the noisy values within ``L`` hops. Each of
these denoisers (``--radii``; 0 = the full one) runs through the sampler from the same seeds, and the power
spectrum error of the fields it makes against real fields (RMS of log10 of the ratio of mean spectra, the number
``polyscale graph evaluate`` reports) is tabulated beside a trained model's (``--run``, optional) and the floor of
a second real draw. The gap between a radius's row and the full row is what that receptive field costs.

    python benchmarks/graph_field_bound.py --rows 32 --cols 32 --radii 0 4 8 --run runs/graph_grid_features
"""

from __future__ import annotations

import argparse
import time

import networkx as nx
import numpy as np
import torch

from common import machine_description, markdown_table, publish


def local_linear_denoiser(cov: np.ndarray, g: nx.Graph, radius: int, sigma: float) -> np.ndarray:
    """``(n, n)``: row ``i`` holds the weights of the optimal linear estimate of node ``i``'s clean value from
    the noisy values (noise ``sigma``) of the nodes within ``radius`` hops of ``i`` (0: all nodes)."""
    n = cov.shape[0]
    if radius == 0:
        return cov @ np.linalg.inv(cov + sigma**2 * np.eye(n))
    w = np.zeros((n, n))
    for i in range(n):
        near = np.fromiter(nx.single_source_shortest_path_length(g, i, cutoff=radius), dtype=np.int64)
        w[i, near] = np.linalg.solve(cov[np.ix_(near, near)] + sigma**2 * np.eye(len(near)), cov[near, i])
    return w


def main() -> None:
    from polyscale.data.graphs import field_covariance, graph_fields, grid_graph, to_data
    from polyscale.diffusion import get_sampler, sigmas_karras
    from polyscale.diffusion.graph import sample_graph_features
    from polyscale.diffusion.sampling import SamplerConfig
    from polyscale.metrics.graphs import graph_power_spectrum, spectrum_error

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--smoothing-steps", type=int, default=4)
    ap.add_argument(
        "--radii", type=int, nargs="+", default=[0, 4, 8], help="hops (0: the full ideal denoiser)"
    )
    ap.add_argument("--run", nargs="*", default=[], help="trained grid features runs to score the same way")
    ap.add_argument("--num-graphs", type=int, default=16)
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = grid_graph(args.rows, args.cols)
    n, node_dim = g.number_of_nodes(), 2
    cov = field_covariance(g, steps=args.smoothing_steps, stationary=True)
    sigmas = sigmas_karras(args.steps, 0.002, 80.0, rho=7.0).double()
    sampler = get_sampler(args.sampler)
    real_rng = np.random.default_rng(1)

    def real_fields() -> np.ndarray:
        x, _ = graph_fields(g, node_dim=node_dim, edge_dim=1, steps=args.smoothing_steps, stationary=True,
                            rng=real_rng)  # fmt: skip
        return x

    def neighbour_corr(fields: list[np.ndarray]) -> float:
        edges = np.array(list(g.edges))
        return float(np.mean([np.mean(x[edges[:, 0]] * x[edges[:, 1]]) for x in fields]))

    real = [real_fields() for _ in range(args.num_graphs)]
    floor = [real_fields() for _ in range(args.num_graphs)]
    real_spectra = [graph_power_spectrum(g, x) for x in real]
    rows: list[dict] = []

    def add(name: str, fields: list[np.ndarray], seconds: float) -> None:
        spectra = [graph_power_spectrum(g, x) for x in fields]
        rows.append({"denoiser": name, "graphs": len(fields), "spectrum err": spectrum_error(spectra, real_spectra),
                     "neighbour corr": neighbour_corr(fields), "s": seconds})  # fmt: skip
        print(rows[-1], flush=True)

    add("real (floor: a second draw)", floor, 0.0)
    for radius in args.radii:
        t0 = time.perf_counter()
        maps = {round(float(s), 10): torch.from_numpy(local_linear_denoiser(cov, g, radius, float(s)))
                for s in sigmas.tolist() if s > 0}  # fmt: skip

        def ideal(x: torch.Tensor, sigma: torch.Tensor, maps=maps, **_) -> torch.Tensor:
            return maps[round(float(sigma[0]), 10)] @ x

        fields = []
        for i in range(args.num_graphs):
            gen = torch.Generator().manual_seed(i)
            x = torch.randn(n, node_dim, generator=gen, dtype=torch.float64) * float(sigmas[0])
            fields.append(sampler(ideal, x, sigmas, generator=gen, disable=True).numpy())
        add(f"ideal linear, {radius} hops" if radius else "ideal (full covariance)", fields,
            time.perf_counter() - t0)  # fmt: skip
    from polyscale.pipelines.graph_sample import load_graph_model

    for run in args.run:
        model = load_graph_model(run, device="cpu")
        d, data = model.config.data, to_data(g)
        if (d.family, d.node_dim, d.smoothing_steps) != ("grid", node_dim, args.smoothing_steps):
            raise SystemExit(
                f"{run}: expected a grid features model with node_dim {node_dim} and smoothing_steps "
                f"{args.smoothing_steps}, got {d.family} / {d.node_dim} / {d.smoothing_steps}"
            )
        t0, fields = time.perf_counter(), []
        for i in range(args.num_graphs):
            node, _ = sample_graph_features(
                model.features, n, data.edge_index.shape[1], d.node_dim, d.edge_dim, data.edge_index,
                sampler=SamplerConfig(args.sampler, args.steps), generator=torch.Generator().manual_seed(i),
            )  # fmt: skip
            fields.append(node.double().numpy())
        add(f"trained `{run}` ({model.config.model.num_layers} layers)", fields, time.perf_counter() - t0)
    text = (f"Machine: {machine_description()}. Grid {args.rows} x {args.cols}, stationary fields, "
            f"{args.smoothing_steps} smoothing steps, sampler {args.sampler} {args.steps}; real neighbour "
            f"correlation {neighbour_corr(real):.3f}.\n\n" + markdown_table(rows))  # fmt: skip
    publish(text, args.out)


if __name__ == "__main__":
    main()
