"""Growth commands: ``grow sparse`` (a sparse classifier that grows) and ``grow depth`` (a GPT that deepens)."""

from __future__ import annotations

import argparse

from polyscale.cli.args import (
    add_command,
    add_device,
    add_run_dir,
    add_seed,
    float_in,
    int_at_least,
    positive_int,
)

SKIPS = (0, 1, 2, 3)  # SparseMLP's skip range: connections up to this many layers back


def _cmd_grow_sparse(args: argparse.Namespace) -> int:
    from polyscale.pipelines.grow import grow_sparse

    summary = grow_sparse(
        dataset=args.dataset,
        epochs=args.epochs,
        sparsity=args.connectivity,
        activation=args.activation,
        hidden_sizes=args.hidden_sizes,
        skip=args.skip,
        lr=args.lr,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        output_dir=args.output_dir,
        grower={
            k: v
            for k, v in (("structure_size", args.structure_size), ("rank", args.rank), ("fill", args.fill))
            if v != {"structure_size": 1, "rank": "random", "fill": None}[k]
        },
        regrowth=args.regrowth,
        resume=not args.no_resume,
    )
    print(
        f"{args.dataset}: test accuracy {summary['test_accuracy']:.4f} at connectivity "
        f"{summary['final_connectivity']:.4%} ({summary['final_connections']} connections, from "
        f"{summary['initial_connectivity']:.4%}); {summary['growth_events']} growth events added "
        f"{summary['connections_added']} connections and {summary['clones']} clones"
    )
    print(
        f"snapshots: {summary['snapshots']} (compression {summary['snapshot_compression_ratio']:.1f}x); "
        f"best snapshot {summary['best_snapshot_test_accuracy']:.4f}, ensemble of "
        f"{len(summary['ensemble_snapshots'])} {summary['ensemble_test_accuracy']:.4f}"
    )
    if args.output_dir is not None:
        print(
            f"wrote {args.output_dir}/: model.safetensors, config.json, snapshots.safetensors, history.jsonl, "
            "summary.json"
        )
    return 0


def _cmd_grow_depth(args: argparse.Namespace) -> int:
    from polyscale.pipelines.grow_depth import grow_depth

    names = ("dataset_path", "n_layer", "n_head", "n_embd", "block_size", "max_layers", "max_steps", "batch_size",
             "lr", "strategy", "detector", "beta0", "gamma0", "eta0", "k_subspace", "ell_orth", "pg_patience",
             "pg_threshold", "tau_crit", "kappa_crit", "warmup_steps", "history_window", "collect_interval",
             "eval_interval", "device", "seed", "output_dir")  # fmt: skip
    summary = grow_depth(**{k: getattr(args, k) for k in names}, resume=not args.no_resume)
    jumps = ", ".join(
        f"step {s}: {j:+.4f}" for s, j in zip(summary["insertion_steps"], summary["loss_jumps"], strict=True)
    )
    print(
        f"validation loss {summary['final_val_loss']:.4f} after {summary['steps']} steps; layers "
        f"{summary['initial_layers']} -> {summary['final_layers']} ({summary['growth_events']} insertions"
        f"{': ' + jumps if jumps else ''}); {summary['training_flops']:.3e} training FLOPs"
    )
    print("sample:\n" + summary["sample"][:300])
    if args.output_dir is not None:
        print(f"wrote {args.output_dir}/: model.safetensors, config.json, history.jsonl, growth.json, layers/, "
              "sample.txt, summary.json")  # fmt: skip
    return 0


def _add_grow_sparse(gsub: argparse._SubParsersAction) -> None:
    from polyscale.data import CLASSIFICATION_DATASETS
    from polyscale.growth.regrowth import METHODS
    from polyscale.growth.sparse_grower import FILLS, RANKS
    from polyscale.nn.sparse import ACTIVATIONS

    p = add_command(
        gsub, "sparse", _cmd_grow_sparse, "train a sparse classifier that grows from a near-empty start"
    )
    p.add_argument("--dataset", choices=list(CLASSIFICATION_DATASETS), default="mnist1d",
                   help="mnist1d: 40-sample signals; digits: scikit-learn's 8x8 images (default mnist1d)")  # fmt: skip
    p.add_argument("--epochs", type=positive_int, default=100, help="training epochs (default 100)")
    connectivity = float_in(0.0, 1.0)
    p.add_argument(
        "--connectivity", type=connectivity, default=1e-4,
        help="initial connectivity: share of possible connections at the start (default 1e-4 = 0.01%%; "
        "every unit also starts with at least one input)",
    )  # fmt: skip
    # the flag's former name, kept working but out of --help
    p.add_argument("--sparsity", type=connectivity, dest="connectivity", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="tanh",
                   help="hidden units' activation (default tanh)")  # fmt: skip
    p.add_argument("--hidden-sizes", type=positive_int, nargs="+", default=[256, 256],
                   help="units per hidden layer (default 256 256)")  # fmt: skip
    p.add_argument(
        "--skip", type=int_at_least(0), choices=list(SKIPS), default=1,
        help="skip connections up to this many layers back (the routing radius; cloning needs >= 1)",
    )  # fmt: skip
    p.add_argument("--lr", type=float_in(0.0, 10.0), default=1e-2, help="Adam learning rate")
    p.add_argument("--batch-size", type=positive_int, default=100, help="examples per step (default 100)")
    add_device(p)
    add_seed(p, "seed of the initial network and of the data order (default 0)")
    add_run_dir(
        p,
        required=False,
        help="run directory: final model, snapshots, history, summary, and a checkpoint every 10 epochs "
        "that a rerun with the same flags resumes from",
        no_resume="ignore a checkpoint already in --output-dir",
    )
    g = p.add_argument_group("opt-in, beyond the issue's growth rules (docs/growth.md)")
    g.add_argument(
        "--structure-size", type=positive_int, default=1,
        help="connections per structure of the phase limits 10/50/200 (default 1: a run adds at most 260)",
    )  # fmt: skip
    g.add_argument(
        "--rank", choices=list(RANKS), default="random",
        help="how a route picks among its candidate targets: uniformly, or by |dL/dW| (default random)",
    )  # fmt: skip
    g.add_argument(
        "--fill", choices=[f for f in FILLS if f is not None], default=None,
        help="place what routing leaves of a growth event's allowance on the inactive positions of largest "
        "|dL/dW|, in every block (default: off)",
    )  # fmt: skip
    g.add_argument(
        "--regrowth", choices=list(METHODS), default=None,
        help="also prune and regrow (SET: random, RigL: by gradient) after every epoch that does not grow",
    )  # fmt: skip


def _add_grow_depth(gsub: argparse._SubParsersAction) -> None:
    from polyscale.growth.depth_grower import STRATEGIES
    from polyscale.growth.depth_schedule import DETECTORS

    p = add_command(
        gsub, "depth", _cmd_grow_depth, "train a character-level GPT that inserts layers when it stagnates"
    )
    p.add_argument(
        "--dataset-path", default=None, help="a UTF-8 text file (default: the shipped Shakespeare)"
    )
    p.add_argument("--n-layer", type=positive_int, default=1, help="initial depth (default 1)")
    p.add_argument("--max-layers", type=positive_int, default=4, help="growth stops here (default 4)")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads per layer (default 4)")
    p.add_argument("--n-embd", type=positive_int, default=128, help="embedding width (default 128)")
    p.add_argument("--block-size", type=positive_int, default=64, help="context length in characters")
    p.add_argument("--max-steps", type=positive_int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=12, help="sequences per step (default 12)")
    p.add_argument("--lr", type=float_in(0.0, 10.0), default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--strategy", choices=list(STRATEGIES), default="geometric",
                   help="initialisation of an inserted layer (default geometric extrapolation)")  # fmt: skip
    p.add_argument("--detector", choices=list(DETECTORS), default="stagnation",
                   help="loss plateau confirmed by tau/kappa (default), or the loss plateau alone")  # fmt: skip
    p.add_argument("--beta0", type=float, default=0.1, help="linear gain: beta = beta0 / (tau + eps)")
    p.add_argument("--gamma0", type=float, default=0.15, help="curvature gain: gamma = gamma0 / (1 + kappa)")
    p.add_argument("--eta0", type=float, default=0.03, help="escape gain under stagnation")
    p.add_argument("--k-subspace", type=positive_int, default=10, help="dominant subspace dimension")
    p.add_argument("--ell-orth", type=int_at_least(0), default=5, help="secondary modes for the escape")
    p.add_argument("--pg-patience", type=positive_int, default=2, help="stagnant checks in a row that grow")
    p.add_argument("--pg-threshold", type=float_in(0.0, 1.0), default=0.01,
                   help="relative improvement below which a check is stagnant")  # fmt: skip
    p.add_argument("--tau-crit", type=float, default=2.0,
                   help="stretch factor above which the trajectory counts as stagnating (default 2)")  # fmt: skip
    p.add_argument("--kappa-crit", type=float, default=0.5,
                   help="curvature above which the trajectory counts as stagnating (default 0.5)")  # fmt: skip
    p.add_argument("--warmup-steps", type=int_at_least(0), default=200,
                   help="steps before the first check, and after each growth")  # fmt: skip
    p.add_argument("--history-window", type=int_at_least(3), default=10, help="snapshots in the trajectory")
    p.add_argument("--collect-interval", type=positive_int, default=50, help="steps between snapshots/checks")
    p.add_argument("--eval-interval", type=positive_int, default=100,
                   help="steps between validation losses (default 100)")  # fmt: skip
    add_device(p)
    add_seed(p)
    add_run_dir(
        p,
        required=False,
        help="run directory; a checkpoint every 500 steps there that a rerun resumes from",
        no_resume="ignore a checkpoint already in --output-dir",
    )


def add_grow_commands(sub: argparse._SubParsersAction) -> None:
    grow = sub.add_parser(
        "grow", help="networks that grow during training: sparse, depth", description="Growth."
    )
    gsub = grow.add_subparsers(dest="grow_command", required=True)
    _add_grow_sparse(gsub)
    _add_grow_depth(gsub)
