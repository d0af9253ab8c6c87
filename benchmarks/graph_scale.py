"""Graph structure generation against graph size: wall time and peak memory from 10^2 to 10^6 nodes, with the
fitted scaling exponent, on this machine's CPU.

Each size runs in a fresh subprocess (so the peak resident set size is that size's own): the positions stage
(the GNN on the k-NN graph of the noisy positions, rebuilt every call) and the edge stage (k-NN candidates,
their triangles, the edge GNN) of one generated graph. The peer in the same run is building the real graph of
that size, ``polyscale.data.graphs.planar_graph`` (scipy's Qhull Delaunay triangulation and a networkx graph):
what the data itself costs. The exponent is the slope of log(time) and log(peak RSS - RSS after imports)
against log(nodes), fitted over the sizes >= 10^3.

    python benchmarks/graph_scale.py --run runs/graph_planar --out bench_graph_scale.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import networkx as nx
import numpy as np
import torch

from common import in_subprocess, machine_description, markdown_table, peak_rss_mib, publish


def worker(run: str, n: int, sampler: str, steps: int, edge_steps: int, seed: int) -> dict:
    from polyscale.data.graph_geometry import spatial_order
    from polyscale.diffusion.sampling import SamplerConfig
    from polyscale.diffusion.structure import sample_edges, sample_positions
    from polyscale.pipelines.graph_sample import edge_geometry, load_graph_model, sampling_domain

    model = load_graph_model(run, device="cpu")
    cfg = model.config
    base = peak_rss_mib()
    generator = torch.Generator().manual_seed(seed)
    n, box = sampling_domain(cfg.data.family, n, rng=np.random.default_rng(seed))
    t0 = time.perf_counter()
    pos_sampler = SamplerConfig(sampler, steps, sigma_max=cfg.diffusion.positions.sampler.sigma_max)
    pos = sample_positions(model.positions, n, pos_sampler, box=box, start=cfg.diffusion.positions.start,
                           order=spatial_order, generator=generator)  # fmt: skip
    t1 = time.perf_counter()
    edge_sampler = SamplerConfig(sampler, edge_steps, sigma_max=cfg.diffusion.edges.sampler.sigma_max)
    g = sample_edges(model.edges, pos, edge_sampler, **edge_geometry(model), generator=generator)
    t2 = time.perf_counter()
    return {
        "nodes": n,
        "edges": g.number_of_edges(),
        "positions s": t1 - t0,
        "edges s": t2 - t1,
        "total s": t2 - t0,
        "peak RSS MiB": peak_rss_mib(),
        "RSS after imports MiB": base,
        "connected": bool(nx.is_connected(g)),
    }


def peer(n: int, seed: int) -> dict:
    from polyscale.data.graphs import planar_graph

    base = peak_rss_mib()
    t0 = time.perf_counter()
    g = planar_graph(n, rng=np.random.default_rng(seed))
    return {"nodes": n, "edges": g.number_of_edges(), "total s": time.perf_counter() - t0,
            "peak RSS MiB": peak_rss_mib(), "RSS after imports MiB": base}  # fmt: skip


def exponent(rows: list[dict], key: str, minimum: int = 1000) -> float:
    pts = [(r["nodes"], r[key]) for r in rows if r["nodes"] >= minimum and r[key] > 0]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a structure run directory (polyscale graph train)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--sampler", default="dpmpp2m")
    parser.add_argument("--steps", type=int, default=16, help="denoising steps of the positions stage")
    parser.add_argument("--edge-steps", type=int, default=8, help="denoising steps of the edge stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "NODES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, n = args.worker[0], int(args.worker[1])
        row = (worker(args.run, n, args.sampler, args.steps, args.edge_steps, args.seed) if kind == "model"
               else peer(n, args.seed))  # fmt: skip
        print(json.dumps(row))
        return
    common = ["--run", args.run, "--sampler", args.sampler, "--steps", str(args.steps),
              "--edge-steps", str(args.edge_steps), "--seed", str(args.seed)]  # fmt: skip
    rows, peers = [], []
    for n in args.sizes:
        print(f"{n} nodes ...", file=sys.stderr, flush=True)
        rows.append(in_subprocess(__file__, [*common, "--worker", "model", str(n)]))
        peers.append(in_subprocess(__file__, [*common, "--worker", "peer", str(n)]))
        rows[-1]["RSS growth MiB"] = rows[-1]["peak RSS MiB"] - rows[-1]["RSS after imports MiB"]
        rows[-1]["time / peer"] = rows[-1]["total s"] / max(peers[-1]["total s"], 1e-9)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = markdown_table(
        rows,
        ["nodes", "edges", "connected", "positions s", "edges s", "total s", "time / peer", "peak RSS MiB",
         "RSS growth MiB"],
    )  # fmt: skip
    peer_table = markdown_table(peers, ["nodes", "edges", "total s", "peak RSS MiB"])
    fits = (
        f"Fitted exponents over sizes >= 10^3 (1 = linear): model time {exponent(rows, 'total s'):.3f}, "
        f"model memory growth {exponent(rows, 'RSS growth MiB'):.3f}; peer time {exponent(peers, 'total s'):.3f}."
    )
    gib = max(r["peak RSS MiB"] for r in rows) / 1024
    text = "\n".join([
        "## Graph generation against size (`benchmarks/graph_scale.py`)", "",
        f"Machine: {machine_description()}. Run `{args.run}`; sampler {args.sampler}, {args.steps} position "
        f"steps and {args.edge_steps} edge steps; one graph per size, each in a fresh process.", "",
        table, "Peer: building the real planar graph of the same size (`planar_graph`: scipy Delaunay + networkx).",
        "", peer_table, fits, f"Largest peak resident memory: {gib:.2f} GiB.", "",
    ])  # fmt: skip
    publish(text, args.out)
    if any(math.isnan(v) for v in (exponent(rows, "total s"),)):
        sys.exit("not enough sizes >= 10^3 to fit an exponent")


if __name__ == "__main__":
    main()
