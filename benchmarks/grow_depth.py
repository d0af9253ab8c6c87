"""Depth growth of a character-level GPT against fixed-depth baselines, by training FLOPs.

    python benchmarks/grow_depth.py --dataset-path ../shared/data/tinyshakespeare.txt

The setup is nanoGPT's CPU recipe for ``shakespeare_char``: 4 layers, 4 heads, 128 wide, context 64,
batch 12, 2,000 steps, AdamW at lr 1e-3 with cosine decay to 1e-4, dropout 0. nanoGPT publishes a
validation loss of 1.88 for it. The 90 / 10 character split is nanoGPT's.

Methods, every one with the same seed, data order, learning-rate schedule and evaluation batches:

- ``fixed_final``: 4 layers throughout;
- ``fixed_initial``: 1 layer throughout;
- growth from 1 layer to at most 4, triggered by :class:`polyscale.growth.LossPlateau`, with each
  initialisation of the new (appended) block:
  - ``geometric`` (beta0 0.1, gamma0 0.15, eta0 0.03);
  - ``linear`` (gamma0 = eta0 = 0);
  - ``curvature`` (eta0 = 0);
  - ``copy`` of the last block;
  - ``zero``: a zero-initialised residual block, the exact identity;
  - ``random``: a fresh block.

FLOPs are ``GPT.flops_per_token`` times the tokens of each step, at the depth the step ran with;
evaluation is not counted. "FLOPs to target" is the training FLOPs at the first evaluation (every
``--eval-interval`` steps) whose validation loss is at or below ``fixed_final``'s final one. Prints one JSON
line per run and a markdown table; ``--json-out`` keeps the runs, loss curves and growth events.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import torch

from polyscale.data.text import CharCorpus
from polyscale.growth import DETECTORS, GeometricExtrapolator, make_detector
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.training.depth_growth import DepthGrowthCallback, train_lm

GROWTH = {
    "geometric": ("geometric", dict(beta0=0.1, gamma0=0.15, eta0=0.03)),
    "linear": ("geometric", dict(beta0=0.1, gamma0=0.0, eta0=0.0)),
    "curvature": ("geometric", dict(beta0=0.1, gamma0=0.15, eta0=0.0)),
    "copy": ("copy", {}),
    "zero": ("zero", {}),
    "random": ("random", {}),
}
METHODS = ("fixed_final", "fixed_initial", *GROWTH)


def run(method: str, args: argparse.Namespace, seed: int) -> dict:
    torch.set_num_threads(1)
    corpus = CharCorpus.from_file(args.dataset_path)
    torch.manual_seed(seed)
    depth = args.final_layers if method == "fixed_final" else args.initial_layers
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=args.block_size, n_layer=depth,
                          n_head=args.n_head, n_embd=args.n_embd))  # fmt: skip
    callbacks, cb = [], None
    if method in GROWTH:
        strategy, gains = GROWTH[method]
        detector = make_detector(
            args.detector, warmup_steps=args.warmup_steps, patience=args.patience, threshold=args.threshold,
            tau_crit=args.tau_crit, kappa_crit=args.kappa_crit,
        )  # fmt: skip
        cb = DepthGrowthCallback(
            detector, strategy=strategy, extrapolator=GeometricExtrapolator(**gains, k_subspace=args.k_subspace,
                                                                             ell_orth=args.ell_orth),
            history_window_size=args.history_window, collect_interval_steps=args.collect_interval,
            max_layers=args.final_layers, generator=torch.Generator().manual_seed(seed),
            probe=corpus.batch("train", 64, args.block_size, generator=torch.Generator().manual_seed(99)),
        )  # fmt: skip
        callbacks = [cb]
    steps = args.growth_steps if method in GROWTH and args.growth_steps else args.max_steps
    start = time.perf_counter()
    result = train_lm(model, corpus, max_steps=steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=100, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
                      callbacks=callbacks, seed=seed, progress=False)  # fmt: skip
    out = {
        "method": method, "seed": seed, "seconds": time.perf_counter() - start,
        "final_val_loss": result.history[-1]["val_loss"], "flops": result.flops,
        "final_layers": model.config.n_layer, "history": result.history,
    }  # fmt: skip
    if cb is not None:
        out["events"] = [{"step": e.step, "n_layer": e.n_layer, "jump": e.jump, "loss_before": e.loss_before,
                          "tau": e.tau, "kappa": e.kappa, **e.details} for e in cb.events]  # fmt: skip
        out["checks"] = cb.checks
    return out


def at_budget(history: list[dict], budget: float) -> float | None:
    """Validation loss of the last evaluation whose training FLOPs are within ``budget``."""
    within = [h for h in history if h["flops"] <= budget * (1 + 1e-9)]
    return within[-1]["val_loss"] if within else None


def summarize(runs: list[dict]) -> None:
    """Markdown tables of ``runs`` (any seeds): per method, mean ± std over seeds."""
    import statistics

    def ms(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    seeds = sorted({r["seed"] for r in runs})
    ref = {r["seed"]: r for r in runs if r["method"] == "fixed_final"}
    methods = list(dict.fromkeys(r["method"] for r in runs))  # in order of appearance
    fractions = (0.25, 0.5, 0.7, 1.0)
    print(
        f"\nseeds {seeds}; budgets are fractions of fixed_final's training FLOPs "
        f"({statistics.mean(r['flops'] for r in ref.values()):.3e})"
        if ref
        else ""
    )
    print("| method | " + " | ".join(f"val loss at {f:.2f} F" for f in fractions)
          + " | final val loss | FLOPs / F | FLOPs to target / F (per seed) |")  # fmt: skip
    print("|---|" + "---|" * (len(fractions) + 3))
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        cells = [ms(at_budget(r["history"], f * ref[r["seed"]]["flops"]) for r in rs if r["seed"] in ref)
                 for f in fractions]  # fmt: skip
        hits = []
        for r in rs:
            if r["seed"] not in ref:
                continue
            target, flops_ref = ref[r["seed"]]["final_val_loss"], ref[r["seed"]]["flops"]
            hit = next((h["flops"] for h in r["history"] if h["val_loss"] <= target), None)
            hits.append(f"{hit / flops_ref:.2f}" if hit is not None else "not reached")
        ratio = ms(r["flops"] / ref[r["seed"]]["flops"] for r in rs if r["seed"] in ref)
        print(f"| {m} | " + " | ".join(cells) + f" | {ms(r['final_val_loss'] for r in rs)} | {ratio} | "
              f"{', '.join(hits)} |")  # fmt: skip
    print("\n| method | seed | insertions: step (loss jump) | tau over the run | kappa over the run |")
    print("|---|---|---|---|---|")
    for r in runs:
        if "events" not in r:
            continue
        events = ", ".join(f"{e['step']} ({e['jump']:+.3f})" for e in r["events"]) or "-"
        taus = [c["tau"] for c in r["checks"] if c["tau"] is not None]
        kappas = [c["kappa"] for c in r["checks"] if c["kappa"] is not None]
        span = lambda v: f"{min(v):.2f}–{max(v):.2f} (median {statistics.median(v):.2f})" if v else "-"  # noqa: E731
        print(f"| {r['method']} | {r['seed']} | {events} | {span(taus)} | {span(kappas)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset-path", default=None, help="a text file (default: the shipped Shakespeare)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                   help="print the tables of earlier --json-out files instead of running")  # fmt: skip
    numbers = (
        ("--initial-layers", int, 1), ("--final-layers", int, 4), ("--n-head", int, 4), ("--n-embd", int, 128),
        ("--block-size", int, 64), ("--batch-size", int, 12), ("--max-steps", int, 2000), ("--lr", float, 1e-3),
        ("--eval-interval", int, 100), ("--eval-iters", int, 20), ("--warmup-steps", int, 200),
        ("--patience", int, 2), ("--threshold", float, 0.01), ("--tau-crit", float, 2.0),
        ("--kappa-crit", float, 0.5), ("--history-window", int, 10), ("--collect-interval", int, 50),
        ("--k-subspace", int, 10), ("--ell-orth", int, 5),
    )  # fmt: skip
    for flag, kind, default in numbers:
        p.add_argument(flag, type=kind, default=default, help=f"default {default}")
    p.add_argument(
        "--growth-steps", type=int, default=None, help="steps of the growth runs (default max-steps)"
    )
    p.add_argument("--detector", choices=list(DETECTORS), default="plateau")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    if args.summarize:
        runs = []
        for path in args.summarize:
            with open(path) as f:
                runs += json.load(f)["runs"]
        summarize(runs)
        return
    jobs = [(m, args, seed) for seed in args.seeds for m in args.methods]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        runs = pool.starmap(run, jobs)
    if args.growth_steps:  # growth runs of another length are other rows of the table
        for r in runs:
            if r["method"] in GROWTH:
                r["method"] = f"{r['method']} ({args.growth_steps} steps)"
    for r in runs:
        print(json.dumps({k: v for k, v in r.items() if k not in ("history", "checks")}), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    summarize(runs)


if __name__ == "__main__":
    main()
