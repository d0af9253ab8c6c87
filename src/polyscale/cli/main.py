"""The ``polyscale`` command line: parses flags and calls :mod:`polyscale.pipelines`. No logic of its own.

Every failure is one line on stderr and a non-zero exit: a flag that does not parse (or is out of range) gives
``polyscale <cmd>: error: <message> (see polyscale <cmd> --help)`` and exit code 2 (argparse's convention);
an error raised by the pipelines (``ValueError``, ``OSError``: bad checkpoint, contradicting flags, missing
files, no CUDA, out of memory) gives ``polyscale <cmd>: error: <message>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_ERROR = 2  # for usage errors and for errors the pipelines report


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (no usage block) pointing at ``--help``.

    ``add_subparsers`` builds subcommand parsers of the same class, so ``polyscale sample --dim 4`` reports as
    ``polyscale sample: error: argument --dim: invalid choice: 4 (choose from 1, 2, 3) (see polyscale sample
    --help)``.
    """

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())  # argparse messages may hold newlines
        self.exit(EXIT_ERROR, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum`` with a message naming what arrived."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _int(text: str) -> int:
    """An argparse ``type`` for any integer, with a message naming what arrived."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type`` accepting numbers in ``(low, high]``, with a message naming what arrived."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"expected a number in ({low}, {high}], got {value}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _cmd_presets(args: argparse.Namespace) -> int:
    from polyscale.pipelines.experiment import preset_names
    from polyscale.pipelines.sample import shipped_models

    print("presets:", " ".join(preset_names()))
    print("shipped models:", " ".join(shipped_models()) or "(none)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from polyscale.pipelines.experiment import load_experiment
    from polyscale.pipelines.train import train_experiment

    cfg = load_experiment(args.preset, overrides=args.set)
    result = train_experiment(cfg, args.output_dir, resume=not args.no_resume, init_from=args.init_from)
    print(f"trained {result.step} steps in {result.wall_time:.1f} s; model saved to {args.output_dir}/model")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from polyscale.pipelines.sample import sample_checkpoint

    dims = args.dim if args.dim is not None or args.checkpoint is not None else 2
    result = sample_checkpoint(
        args.checkpoint,
        **_sampling_kwargs(args),
        output_file=args.output_file,
        batch_size=args.batch_size,
        save_raw=args.save_raw or False,
        dims=dims,
        channels=args.channels,
        base_channels=args.base_channels,
        create_animation=args.create_animation,
        animation_interval=args.animation_interval,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
    )
    for path in result.files:
        print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from polyscale.pipelines.evaluate import evaluate_checkpoint, format_table

    rows = evaluate_checkpoint(args.checkpoint, **_sampling_kwargs(args))
    print(format_table(rows))
    return 0


def _cmd_graph_train(args: argparse.Namespace) -> int:
    from polyscale.pipelines.graph_config import load_graph_experiment
    from polyscale.pipelines.graph_train import train_graph_experiment

    cfg = load_graph_experiment(args.preset, overrides=args.set)
    results = train_graph_experiment(cfg, args.output_dir, resume=not args.no_resume, stages=args.stage)
    seconds = sum(r.wall_time for r in results)
    where = ", ".join(str(r.model_dir) for r in results)
    print(f"trained {cfg.task} model(s) in {seconds:.1f} s; saved to {where}")
    return 0


def _with_position_sampler(model, args: argparse.Namespace):
    """The model with its ``--set diffusion.*`` overrides, then its positions stage's default sampler / steps
    replaced by the flags that are given."""
    from polyscale.pipelines.graph_sample import with_position_sampler, with_sampling_overrides

    model = with_sampling_overrides(model, args.set)
    return with_position_sampler(model, args.position_sampler, args.position_timesteps)


def _cmd_graph_sample(args: argparse.Namespace) -> int:
    from polyscale.pipelines.graph_sample import generate_graphs, load_graph_model
    from polyscale.viz.graphs import save_graph_grid, save_graphs_npz

    model = _with_position_sampler(load_graph_model(args.checkpoint, device=args.device), args)
    graphs = generate_graphs(
        model, args.num_nodes, args.num_graphs, sampler=args.sampler, steps=args.timesteps, seed=args.seed,
        progress=True,
    )  # fmt: skip
    print(f"wrote {save_graph_grid(graphs, args.output_file)}")
    print(f"wrote {save_graphs_npz(graphs, args.output_file)}")
    return 0


def _cmd_graph_evaluate(args: argparse.Namespace) -> int:
    from polyscale.pipelines.graph_evaluate import evaluate_graph_model, format_graph_table
    from polyscale.pipelines.graph_sample import load_graph_model

    model = _with_position_sampler(load_graph_model(args.checkpoint, device=args.device), args)
    rows = evaluate_graph_model(
        model,
        args.sizes,
        num_graphs=args.num_graphs,
        sampler=args.sampler,
        steps=args.timesteps,
        seed=args.seed,
    )
    print(format_graph_table(rows))
    return 0


def _cmd_grow_sparse(args: argparse.Namespace) -> int:
    from polyscale.pipelines.grow import grow_sparse

    summary = grow_sparse(
        dataset=args.dataset,
        epochs=args.epochs,
        sparsity=args.sparsity,
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


def _add_grow_depth(gsub: argparse._SubParsersAction) -> None:
    p = _add_command(
        gsub, "depth", _cmd_grow_depth, "train a character-level GPT that inserts layers when it stagnates"
    )
    p.add_argument(
        "--dataset-path", default=None, help="a UTF-8 text file (default: the shipped Shakespeare)"
    )
    p.add_argument("--n-layer", type=positive_int, default=1, help="initial depth (default 1)")
    p.add_argument("--max-layers", type=positive_int, default=4, help="growth stops here (default 4)")
    p.add_argument("--n-head", type=positive_int, default=4)
    p.add_argument("--n-embd", type=positive_int, default=128)
    p.add_argument("--block-size", type=positive_int, default=64, help="context length in characters")
    p.add_argument("--max-steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=12)
    p.add_argument("--lr", type=_float_in(0.0, 10.0), default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--strategy", choices=["geometric", "copy", "zero", "random"], default="geometric",
                   help="initialisation of an inserted layer (default geometric extrapolation)")  # fmt: skip
    p.add_argument("--detector", choices=["stagnation", "plateau"], default="stagnation",
                   help="loss plateau confirmed by tau/kappa (default), or the loss plateau alone")  # fmt: skip
    p.add_argument("--beta0", type=float, default=0.1, help="linear gain: beta = beta0 / (tau + eps)")
    p.add_argument("--gamma0", type=float, default=0.15, help="curvature gain: gamma = gamma0 / (1 + kappa)")
    p.add_argument("--eta0", type=float, default=0.03, help="escape gain under stagnation")
    p.add_argument("--k-subspace", type=positive_int, default=10, help="dominant subspace dimension")
    p.add_argument("--ell-orth", type=_int_at_least(0), default=5, help="secondary modes for the escape")
    p.add_argument("--pg-patience", type=positive_int, default=2, help="stagnant checks in a row that grow")
    p.add_argument("--pg-threshold", type=_float_in(0.0, 1.0), default=0.01,
                   help="relative improvement below which a check is stagnant")  # fmt: skip
    p.add_argument("--tau-crit", type=float, default=2.0)
    p.add_argument("--kappa-crit", type=float, default=0.5)
    p.add_argument("--warmup-steps", type=_int_at_least(0), default=200,
                   help="steps before the first check, and after each growth")  # fmt: skip
    p.add_argument("--history-window", type=_int_at_least(3), default=10, help="snapshots in the trajectory")
    p.add_argument("--collect-interval", type=positive_int, default=50, help="steps between snapshots/checks")
    p.add_argument("--eval-interval", type=positive_int, default=100)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--output-dir", default=None,
                   help="run directory; a checkpoint every 500 steps there that a rerun resumes from")  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint already in --output-dir")


def _add_grow_commands(sub: argparse._SubParsersAction) -> None:
    grow = sub.add_parser(
        "grow", help="networks that grow during training: sparse, depth", description="Growth."
    )
    gsub = grow.add_subparsers(dest="grow_command", required=True)
    p = _add_command(
        gsub, "sparse", _cmd_grow_sparse, "train a sparse classifier that grows from a near-empty start"
    )
    p.add_argument("--dataset", choices=["mnist1d", "digits"], default="mnist1d")
    p.add_argument("--epochs", type=positive_int, default=100)
    p.add_argument(
        "--sparsity", type=_float_in(0.0, 1.0), default=1e-4,
        help="initial connectivity: share of possible connections at the start (default 1e-4 = 0.01%%; "
        "every unit also starts with at least one input)",
    )  # fmt: skip
    p.add_argument("--activation", choices=["tanh", "sigmoid", "relu"], default="tanh")
    p.add_argument("--hidden-sizes", type=positive_int, nargs="+", default=[256, 256])
    p.add_argument(
        "--skip", type=_int_at_least(0), choices=[0, 1, 2, 3], default=1,
        help="skip connections up to this many layers back (the routing radius; cloning needs >= 1)",
    )  # fmt: skip
    p.add_argument("--lr", type=_float_in(0.0, 10.0), default=1e-2, help="Adam learning rate")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument(
        "--output-dir",
        default=None,
        help="run directory: final model, snapshots, history, summary, and a checkpoint every 10 epochs "
        "that a rerun with the same flags resumes from",
    )
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint already in --output-dir")
    _add_grow_depth(gsub)
    g = p.add_argument_group("opt-in, beyond the issue's growth rules (docs/growth.md)")
    g.add_argument(
        "--structure-size", type=positive_int, default=1,
        help="connections per structure of the phase limits 10/50/200 (default 1: a run adds at most 260)",
    )  # fmt: skip
    g.add_argument(
        "--rank", choices=["random", "gradient"], default="random",
        help="how a route picks among its candidate targets: uniformly, or by |dL/dW| (default random)",
    )  # fmt: skip
    g.add_argument(
        "--fill", choices=["gradient"], default=None,
        help="place what routing leaves of a growth event's allowance on the inactive positions of largest "
        "|dL/dW|, in every block (default: off)",
    )  # fmt: skip
    g.add_argument(
        "--regrowth", choices=["set", "rigl"], default=None,
        help="also prune and regrow (SET: random, RigL: by gradient) after every epoch that does not grow",
    )  # fmt: skip


def _add_sampling_args(p: argparse.ArgumentParser, *, num_samples: int) -> None:
    """Flags that `sample` and `evaluate` share: how many samples, sampler, steps, size, seed, device."""
    from polyscale.diffusion import SAMPLERS

    p.add_argument("--num-samples", type=positive_int, default=num_samples, help=f"default {num_samples}")
    p.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="default: the one the checkpoint was trained with",
    )
    p.add_argument(
        "--timesteps", type=positive_int, default=None, help="denoising steps (default: the checkpoint's)"
    )
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=None,
        help="spatial size per axis, a multiple of the model's size multiple (default: training size)",
    )
    p.add_argument("--seed", type=_int, default=0, help="seed of the noise (default 0)")
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present"
    )


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.timesteps,
        seed=args.seed,
        resolution=args.resolution,
        device=args.device,
    )


def _add_command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(func=func, command_parser=p)  # command_parser: reports unrecognized flags in its name
    return p


def _add_sample_command(sub: argparse._SubParsersAction) -> None:
    p = _add_command(sub, "sample", _cmd_sample, "generate samples from a model directory or a shipped model")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model directory or shipped model name (default: the shipped model for --dim: "
        "1 mnist1d, 2 digits2d, 3 porous3d)",
    )
    p.add_argument("--dim", type=int, choices=[1, 2, 3], default=None, help="spatial dimensions (default 2)")
    p.add_argument(
        "--channels", type=positive_int, default=None, help="data channels (checked against the checkpoint)"
    )
    p.add_argument(
        "--base-channels",
        type=positive_int,
        default=None,
        help="model width (checked against the checkpoint)",
    )
    p.add_argument(
        "--create-animation",
        action="store_true",
        help="also write a GIF of x beside the denoised estimate, and an MP4 when ffmpeg is found",
    )
    p.add_argument(
        "--animation-interval", type=positive_int, default=1, help="keep every K-th step in the animation"
    )
    p.add_argument(
        "--tile-size",
        type=positive_int,
        default=None,
        help="denoise overlapping windows of this edge (bounded memory)",
    )
    p.add_argument(
        "--tile-overlap",
        type=non_negative_int,
        default=None,
        help="positions windows share, smaller than --tile-size (default tile/4)",
    )
    _add_sampling_args(p, num_samples=16)
    p.add_argument(
        "--output-file", default="samples.png", help="picture to write (raw files and animations beside it)"
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="samples per batch (default: all)")
    p.add_argument(
        "--save-raw",
        nargs="?",
        const="npy",
        default=None,
        choices=["npy", "pt"],
        help="also write the raw samples: .npy (the default format) or .pt (a tensor for "
        "torch.load(weights_only=True)); 3D always writes them (.npy unless pt is given)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``polyscale`` parser with subcommands ``presets``, ``train``, ``sample`` and ``evaluate``."""
    parser = OneLineParser(prog="polyscale", description="Scale-agnostic diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_command(sub, "presets", _cmd_presets, "list the shipped presets and models")

    p = _add_command(sub, "train", _cmd_train, "train a preset (or a YAML experiment file)")
    p.add_argument(
        "--preset", required=True, help="preset name (see `polyscale presets`) or path to a .yaml file"
    )
    p.add_argument("--output-dir", required=True, help="run directory (checkpoints, logs, final model/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --output-dir")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from this model directory or shipped model (same network as the preset); "
        "a run resuming its own checkpoint ignores it",
    )

    _add_sample_command(sub)

    p = _add_command(
        sub,
        "evaluate",
        _cmd_evaluate,
        "score a model against held-out real data, beside the real-vs-real floor",
    )
    p.add_argument("--checkpoint", required=True, help="model directory, or a shipped model name")
    _add_sampling_args(p, num_samples=512)

    _add_graph_commands(sub)
    _add_grow_commands(sub)
    return parser


def _add_graph_commands(sub: argparse._SubParsersAction) -> None:
    from polyscale.diffusion import SAMPLERS

    graph = sub.add_parser(
        "graph", help="graph diffusion: train | sample | evaluate", description="Graph diffusion."
    )
    gsub = graph.add_subparsers(dest="graph_command", required=True)
    p = _add_command(gsub, "train", _cmd_graph_train, "train a graph preset (or a graph YAML file)")
    p.add_argument(
        "--preset", required=True, help="graph preset (graph_planar, graph_grid, graph_features) or .yaml"
    )
    p.add_argument("--output-dir", required=True, help="run directory")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. optimization.lr=1e-3"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --output-dir")
    p.add_argument(
        "--stage", choices=["positions", "edges"], action="append", default=None,
        help="structure task: train only this stage (repeatable; default both, one after the other)",
    )  # fmt: skip

    def common(p: argparse.ArgumentParser, *, num_graphs: int) -> None:
        p.add_argument("--checkpoint", required=True, help="run directory written by `polyscale graph train`")
        p.add_argument("--num-graphs", type=positive_int, default=num_graphs, help="graphs per size")
        p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="default: the experiment's")
        p.add_argument("--timesteps", type=positive_int, default=None, help="denoising steps")
        p.add_argument(
            "--position-sampler", choices=sorted(SAMPLERS), default=None,
            help="structure task: the positions stage's default sampler (an explicit --sampler still sets both stages)",
        )  # fmt: skip
        p.add_argument(
            "--position-timesteps",
            type=positive_int,
            default=None,
            help="structure task: positions stage steps",
        )
        p.add_argument(
            "--set", action="append", default=[], metavar="diffusion.KEY=VALUE",
            help="override how the run samples, e.g. diffusion.positions.sampler.options.s_churn=0 (diffusion.* only)",
        )  # fmt: skip
        p.add_argument("--seed", type=_int, default=0)
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    p = _add_command(gsub, "sample", _cmd_graph_sample, "generate graphs of any size")
    common(p, num_graphs=4)
    p.add_argument("--num-nodes", type=_int_at_least(2), default=64, help="nodes per graph")
    p.add_argument(
        "--output-file", default="graphs.png", help="picture to write (an .npz of the graphs beside it)"
    )

    p = _add_command(
        gsub, "evaluate", _cmd_graph_evaluate, "validity and MMDs per size, beside the real floor"
    )
    common(p, num_graphs=16)
    p.add_argument("--sizes", type=_int_at_least(2), nargs="+", default=[64], help="graph sizes to evaluate")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``polyscale`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Flag errors exit through ``SystemExit(2)`` (argparse); pipeline errors return 2. Either way stderr gets
    exactly one line.
    """
    import torch

    from polyscale.pipelines.allocator import apply_from_environment

    args, extras = build_parser().parse_known_args(argv)
    if extras:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        apply_from_environment()  # POLYSCALE_KEEP_FREED_MEMORY=1: reuse freed memory (pipelines/allocator.py)
        return args.func(args)
    except (ValueError, OSError, torch.OutOfMemoryError) as err:
        sub_name = {"graph": "graph_command", "grow": "grow_command"}.get(args.command)
        name = f"{args.command} {getattr(args, sub_name)}" if sub_name else args.command
        print(f"polyscale {name}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
