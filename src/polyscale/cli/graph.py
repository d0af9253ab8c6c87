"""Graph commands: ``graph train``, ``graph sample``, ``graph evaluate``."""

from __future__ import annotations

import argparse

from polyscale.cli.args import (
    add_allow_change,
    add_command,
    add_device,
    add_force,
    add_overrides,
    add_run_dir,
    add_seed,
    int_at_least,
    positive_int,
)


def _cmd_graph_train(args: argparse.Namespace) -> int:
    from polyscale.pipelines.graph_config import load_graph_experiment
    from polyscale.pipelines.graph_train import train_graph_experiment

    cfg = load_graph_experiment(args.preset, overrides=args.set)
    results = train_graph_experiment(
        cfg,
        args.output_dir,
        resume=not args.no_resume,
        stages=args.stage,
        allow_change=tuple(args.allow_change or ()),
    )
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
    from polyscale.pipelines.graph_sample import sample_graph_checkpoint

    result = sample_graph_checkpoint(
        args.checkpoint, num_nodes=args.num_nodes, num_graphs=args.num_graphs, output_file=args.output_file,
        sampler=args.sampler, steps=args.timesteps, position_sampler=args.position_sampler,
        position_steps=args.position_timesteps, overrides=args.set, seed=args.seed, device=args.device,
        progress=True, force=args.force,
    )  # fmt: skip
    for path in result.files:
        print(f"wrote {path}")
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
        progress=True,
    )
    print(format_graph_table(rows))
    return 0


def _add_sampling_args(p: argparse.ArgumentParser, *, num_graphs: int) -> None:
    """Flags that `graph sample` and `graph evaluate` share."""
    from polyscale.diffusion import SAMPLERS

    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run directory written by `polyscale graph train`, a model directory inside it, or a shipped model name",
    )
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
    add_overrides(
        p,
        metavar="diffusion.KEY=VALUE",
        help="override how the run samples, e.g. diffusion.positions.sampler.options.s_churn=0 (diffusion.* only)",
    )
    add_seed(p, "seed of the noise (default 0)")
    add_device(p)


def add_graph_commands(sub: argparse._SubParsersAction) -> None:
    graph = sub.add_parser(
        "graph", help="graph diffusion: train | sample | evaluate", description="Graph diffusion."
    )
    gsub = graph.add_subparsers(dest="graph_command", required=True)
    from polyscale.pipelines.graph_config import GraphExperimentConfig

    p = add_command(
        gsub,
        "train",
        _cmd_graph_train,
        "train a graph preset (or a graph YAML file)",
        config=GraphExperimentConfig,
    )
    p.add_argument(
        "--preset", required=True, help="graph preset (see `polyscale presets`) or path to a graph .yaml file"
    )
    add_run_dir(p, required=True, help="run directory")
    add_overrides(p, metavar="KEY=VALUE", help="e.g. optimization.lr=1e-3")
    from polyscale.pipelines.graph_config import STRUCTURE_STAGES
    from polyscale.pipelines.graph_train import CHANGEABLE

    p.add_argument(
        "--stage", choices=list(STRUCTURE_STAGES), action="append", default=None,
        help="structure task: train only this stage (repeatable; default both, one after the other)",
    )  # fmt: skip
    add_allow_change(p, CHANGEABLE)

    p = add_command(gsub, "sample", _cmd_graph_sample, "generate graphs of any size")
    _add_sampling_args(p, num_graphs=4)
    p.add_argument("--num-nodes", type=int_at_least(2), default=64, help="nodes per graph")
    p.add_argument(
        "--output-file",
        default="graphs.png",
        help="picture to write, a .png (an .npz of the graphs beside it)",
    )
    add_force(p)

    p = add_command(
        gsub, "evaluate", _cmd_graph_evaluate, "validity and MMDs per size, beside the real floor"
    )
    _add_sampling_args(p, num_graphs=16)
    p.add_argument("--sizes", type=int_at_least(2), nargs="+", default=[64], help="graph sizes to evaluate")
