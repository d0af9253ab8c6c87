"""A grown sparse network on MNIST-1D against a dense MLP, a static sparse network and SET /
RigL regrowth at the grown network's final connectivity; mean +- std over seeds.

    python benchmarks/grow_mnist1d.py --seeds 0 1 2 --epochs 100 --hidden-sizes 256 256 --activation tanh

Every method trains with Adam (same lr, batch size and epochs) on the same 3,600 training signals and is
scored on the 1,000 test signals (published test accuracy: logistic 32 %, MLP 68 %, CNN 94 %). The grown
network uses the library defaults (``polyscale grow sparse``); the others:

- ``dense``: ``nn.Linear`` layers of the same hidden sizes (no skip connections, as a plain MLP);
- ``static``: a ``SparseMLP`` (same skip radius and per-unit minima) with a fixed random structure of as many
  connections as the grown network ends with;
- ``set`` / ``rigl``: the same start, pruning and regrowing a cosine-decayed 30 % of every block after every
  epoch (``polyscale.growth.regrowth``).

- ``gradgrow`` (exploration, not a library method; ``--methods gradgrow``): the grown network's start, growing
  by dense-gradient magnitude alone (no extrema, no credits) to ``--gradgrow-target`` connectivity (5 %) in 30
  events, one every 2 epochs, each block getting a share of the event's budget in proportion to its size. It
  asks whether growth to a 5 % target can reach the dense MLP at all.

The grower's opt-in switches (``--structure-size``, ``--rank``, ``--fill``, ``--regrowth``; docs/growth.md)
apply to the grown network; the baselines are then matched to its final connection count as before:

    python benchmarks/grow_mnist1d.py --activation relu --structure-size 14 --rank gradient --fill gradient \
        --regrowth rigl

Prints one JSON line per run and a markdown table at the end (``--json-out`` keeps the runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from polyscale.nn.sparse_mlp import ACTIVATIONS, SparseMLP
from polyscale.pipelines.grow import classification_data, grow_sparse
from polyscale.pipelines.grow_config import GrowSparseConfig
from polyscale.training.sparse_growth import SparseGrowthTrainer, accuracy


class DenseMLP(nn.Module):
    def __init__(self, sizes: list[int], activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


def train_dense(sizes, activation, data, *, epochs, lr, batch_size, seed) -> float:
    (x, y), _, (xt, yt) = data
    torch.manual_seed(seed)
    net = DenseMLP(sizes, activation)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return accuracy(net, xt, yt)


def matched_net(sizes, activation, skip, connections, seed) -> SparseMLP:
    """A ``SparseMLP`` whose initial connection count is the closest to ``connections`` (bisection on the
    density; the per-unit minima make the count a step function of it)."""

    def build(density):
        return SparseMLP(
            sizes[0], sizes[1:-1], sizes[-1], activation=activation, skip=skip, density=density,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if build(mid).connectivity_stats()["active"] < connections else (low, mid)
    return build(high)


def train_sparse(
    sizes, activation, skip, connections, data, *, regrowth, epochs, lr, batch_size, seed
) -> dict:
    train, val, (xt, yt) = data
    torch.manual_seed(seed)
    net = matched_net(sizes, activation, skip, connections, seed)
    trainer = SparseGrowthTrainer(
        net, train, val, lr=lr, batch_size=batch_size, regrowth=regrowth, total_epochs=epochs, seed=seed,
        snapshots=False,
    )  # fmt: skip
    trainer.fit(epochs, progress=False)
    stats = trainer.net.connectivity_stats()
    return {
        "test_accuracy": accuracy(trainer.net, xt, yt),
        "connectivity": stats["ratio"],
        "connections": stats["active"],
    }


def train_gradgrow(sizes, activation, skip, data, *, target, epochs, lr, batch_size, seed) -> dict:
    from polyscale.growth.regrowth import dense_gradients
    from polyscale.training.optimizer_state import apply_changes

    train, val, (xt, yt) = data
    torch.manual_seed(seed)
    net = SparseMLP(
        sizes[0], sizes[1:-1], sizes[-1], activation=activation, skip=skip, density=1e-4,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    trainer = SparseGrowthTrainer(net, train, val, lr=lr, batch_size=batch_size, seed=seed, snapshots=False)
    possible, events = net.connectivity_stats()["possible"], 30
    for epoch in range(epochs):
        trainer.train_epoch()
        if epoch % 2 == 1 and epoch < 2 * events:
            budget = max(0, int(target * possible) - trainer.net.connectivity_stats()["active"])
            per_event = budget // max(1, events - epoch // 2)
            grads = dense_gradients(
                trainer.net, train[0][:1024], train[1][:1024], nn.functional.cross_entropy
            )
            changes = []
            for name, block in trainer.net.blocks.items():
                k = int(per_event * block.in_features * block.out_features / possible)
                pool = (~block.mask().flatten()).nonzero().squeeze(1)
                pick = pool[grads[name].flatten()[pool].abs().argsort(descending=True)[:k]]
                if pick.numel():
                    changes.append(trainer.net.connect(name, pick, torch.zeros(pick.numel())))
            apply_changes(trainer.optimizer, changes)
    stats = trainer.net.connectivity_stats()
    return {
        "test_accuracy": accuracy(trainer.net, xt, yt),
        "connectivity": stats["ratio"],
        "connections": stats["active"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--skip", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=["grown", "dense", "static", "set", "rigl"])
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--gradgrow-target", type=float, default=0.05, help="gradgrow's final connectivity")
    parser.add_argument("--phase-limits", type=int, nargs=3, default=None, help="default: 10 50 200")
    parser.add_argument("--stabilisation", type=int, default=None, help="default: 10 epochs")
    parser.add_argument(
        "--extrema", type=float, nargs=2, default=None, metavar=("HIGH", "LOW"), help="0.95 0.05"
    )
    parser.add_argument("--max-incoming", type=int, default=None, help="default: 5")
    parser.add_argument("--structure-size", type=int, default=None, help="grower: default 1")
    parser.add_argument("--rank", choices=["random", "gradient"], default=None, help="grower: default random")
    parser.add_argument("--fill", choices=["gradient"], default=None, help="grower: default off")
    parser.add_argument(
        "--regrowth", choices=["set", "rigl"], default=None, help="grown: prune and regrow too (default off)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = classification_data("mnist1d")
    sizes = [data[0][0].shape[1], *args.hidden_sizes, 10]
    common = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    schedule, grower = {}, {}
    if args.phase_limits:
        schedule["phase_limits"] = tuple(args.phase_limits)
    if args.stabilisation is not None:
        schedule["stabilisation_epochs"] = args.stabilisation
    if args.extrema:
        grower["high"], grower["low"] = args.extrema
    if args.max_incoming is not None:
        grower["max_incoming"] = args.max_incoming
    for key in ("structure_size", "rank", "fill"):
        if getattr(args, key) is not None:
            grower[key] = getattr(args, key)
    print(json.dumps({"schedule": schedule, "grower": grower, "regrowth": args.regrowth}), flush=True)
    runs = []
    for seed in args.seeds:
        connections = None
        if "grown" in args.methods:
            start = time.perf_counter()
            fields = {k: grower[k] for k in ("structure_size", "rank", "fill") if k in grower}
            cfg = GrowSparseConfig(
                dataset="mnist1d", hidden_sizes=tuple(args.hidden_sizes), activation=args.activation,
                skip=args.skip, seed=seed, progress=False, schedule=schedule, regrowth=args.regrowth, **fields,
                grower={k: v for k, v in grower.items() if k not in fields}, **common,
            )  # fmt: skip
            grown = grow_sparse(cfg)
            row = {"seed": seed, "method": "grown", "seconds": time.perf_counter() - start, **grown}
            print(json.dumps(row), flush=True)
            runs.append(row)
            connections = grown["final_connections"]
        for method in [m for m in args.methods if m != "grown"]:
            start = time.perf_counter()
            if method in ("static", "set", "rigl") and connections is None:
                raise SystemExit(f"{method} is matched to the grown network's connections: include grown")
            if method == "gradgrow":
                out = train_gradgrow(
                    sizes, args.activation, args.skip, data, target=args.gradgrow_target, seed=seed, **common
                )
            elif method == "dense":
                out = {
                    "test_accuracy": train_dense(sizes, args.activation, data, seed=seed, **common),
                    "connectivity": 1.0,
                }
            else:
                regrowth = None if method == "static" else method
                out = train_sparse(
                    sizes,
                    args.activation,
                    args.skip,
                    connections,
                    data,
                    regrowth=regrowth,
                    seed=seed,
                    **common,
                )
            row = {"seed": seed, "method": method, "seconds": time.perf_counter() - start, **out}
            print(json.dumps(row), flush=True)
            runs.append(row)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(runs, f, indent=1)

    def ms(values):
        values = list(values)
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"

    print(
        f"\n| method | test accuracy | connectivity | seconds |  ({args.activation}, hidden {args.hidden_sizes})"
    )
    print("|---|---|---|---|")
    for method in args.methods:
        rs = [r for r in runs if r["method"] == method]
        conn = [r.get("final_connectivity", r.get("connectivity")) for r in rs]
        print(
            f"| {method} | {ms(r['test_accuracy'] for r in rs)} | {ms(conn)} | {ms(r['seconds'] for r in rs)} |"
        )
    grown = [r for r in runs if r["method"] == "grown"]
    if grown:
        print(
            f"\ngrown: growth events {ms(r['growth_events'] for r in grown)}, connections added "
            f"{ms(r['connections_added'] for r in grown)}, clones {ms(r['clones'] for r in grown)}, snapshots "
            f"{ms(r['snapshots'] for r in grown)}, compression {ms(r['snapshot_compression_ratio'] for r in grown)}x, "
            f"best snapshot {ms(r['best_snapshot_test_accuracy'] for r in grown)}, ensemble "
            f"{ms(r['ensemble_test_accuracy'] for r in grown)}, initial connectivity "
            f"{ms(r['initial_connectivity'] for r in grown)}"
        )


if __name__ == "__main__":
    main()
