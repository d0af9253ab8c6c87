"""Produce the sections of ``BENCHMARKS.md`` and assemble the file from them.

    python benchmarks/run_all.py                          # the quick sections (what ``make bench`` does)
    python benchmarks/run_all.py --sections grow_depth    # one section, long ones included
    python benchmarks/run_all.py --long                   # every long section (hours on a CPU)
    python benchmarks/run_all.py --render                 # no runs: re-render stored results, reassemble
    python benchmarks/run_all.py --list                   # the sections, their commands and kinds

Each section is produced by one command and stored under ``benchmarks/results/``: ``NAME.md`` (the tables)
and ``NAME.json`` (title, command, machine, date, peer, seconds; for sections whose script writes raw results,
``NAME.data.json`` too, from which ``--render`` rebuilds the tables without rerunning). ``BENCHMARKS.md`` is
always assembled from every stored section, so rerunning one section never wipes another. ``--quick`` runs
small cases only (a smoke run) and writes nothing under ``benchmarks/results/`` unless ``--results`` says where.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine_description, markdown_table  # noqa: E402

RESULTS = HERE / "results"


@dataclass(frozen=True)
class Section:
    """One section of BENCHMARKS.md: ``command`` (argv after ``python``) produces its markdown."""

    name: str
    title: str
    command: list[str]
    peer: str
    long: bool = False
    quick_args: list[str] = field(default_factory=list)  # extra arguments of a --quick smoke run
    data_flag: str | None = None  # the script's flag that writes raw JSON results (re-renderable)
    render: list[str] | None = None  # argv that rebuilds the markdown from the raw JSON, "{data}" its path
    stdout: bool = False  # the script prints its markdown instead of writing --out
    note: str = ""  # what the table measures and how to read it, printed above the table


def _bench(module: str) -> list[str]:
    return [f"benchmarks/{module}.py"]


SECTIONS: list[Section] = [
    Section(
        "unet",
        "U-Net training step: polyscale `UNet` vs diffusers `UNet2DModel` (2D, 32x32x3)",
        ["benchmarks/run_all.py", "--inline", "unet"],
        "diffusers `UNet2DModel`, same layout and size",
        note="Same ADM layout on both sides, parameter counts within 10 % (checked). Throughput from the median of "
        "alternating rounds; a ratio above 1 means ours is faster. Peak memory of one step above what was resident.",
    ),
    Section(
        "attention",
        "Neighbourhood attention (kernel 7) vs full attention",
        ["benchmarks/run_all.py", "--inline", "attention"],
        "`F.scaled_dot_product_attention`",
        note="Forward + backward, 4 heads of 32 channels, float32. Ratios below 1 mean ours is cheaper. Full "
        "attention runs under a memory cap and is reported as skipped where it would need more.",
    ),
    Section(
        "samplers",
        "Sampler overhead: share of sampling wall time spent outside the denoiser",
        ["benchmarks/run_all.py", "--inline", "samplers"],
        "the denoiser alone (overhead 0)",
        note="Every sampler drives the same 2D U-Net denoiser; the overhead is the share of wall time spent "
        "outside it.",
    ),
    Section(
        "evaluate",
        "`polyscale evaluate`: shipped models beside the real-vs-real floor",
        _bench("evaluate_shipped"),
        "real data against real data (the floor)",
        quick_args=["--model", "mnist1d", "--num-samples", "32"],
    ),
    Section(
        "allocator",
        "CPU allocator: glibc defaults vs `keep_freed_memory`",
        _bench("allocator"),
        "glibc's default allocator settings",
        long=True,
    ),
    Section(
        "e2e",
        "End to end: train the presets from nothing, sample, score",
        ["benchmarks/run_all.py", "--inline", "e2e"],
        "held-out real data (the floor)",
        long=True,
    ),
    Section(
        "scale",
        "Train small, sample large (1x-8x the training size)",
        _bench("scale"),
        "real data of the same size (the floor)",
        long=True,
    ),
    Section(
        "sampler_porosity",
        "porous3d: porosity by sampler and step count",
        [
            *_bench("sampler_porosity"),
            "--size",
            "32",
            "--num-samples",
            "16",
            "dpmpp2m:8",
            "dpmpp2m:16",
            "euler:32",
            "heun:16",
        ],
        "the data's porosity",
        long=True,
    ),
    Section(
        "graphs",
        "Graphs: per-size tables, generation time and memory from 10^2 to 10^6 nodes",
        [*_bench("graph_scale"), "--run", "runs/gpl"],
        "building the real graph of each size",
        long=True,
    ),
    Section(
        "ot",
        "Transport: Sinkhorn against POT and GeomLoss",
        [*_bench("bench_ot"), "points"],
        "POT and GeomLoss in the same run",
        long=True,
    ),
    Section(
        "bridge",
        "The bridge step on an under-trained 2D model",
        _bench("bridge_toy"),
        "the same samplers without the bridge",
        long=True,
    ),
    Section(
        "sparse_layers",
        "Sparse layers: `SparseLinear` masked vs `torch.sparse` vs `nn.Linear`",
        _bench("bench_sparse"),
        "`nn.Linear` and `torch.sparse`",
        long=True,
    ),
    Section(
        "grow_mnist1d",
        "Sparse growth on MNIST-1D: grown vs dense, static, SET, RigL",
        _bench("grow_mnist1d"),
        "dense MLP, static sparse, SET and RigL at the same connectivity",
        long=True,
        data_flag="--json-out",
        stdout=True,
    ),
    Section(
        "grow_depth",
        "Depth growth on tinyshakespeare: growth against fixed depth, by training FLOPs",
        [*_bench("grow_depth"), "--seeds", "0", "1", "2"],
        "fixed-depth GPTs (nanoGPT's CPU recipe)",
        long=True,
        data_flag="--json-out",
        render=[*_bench("grow_depth"), "--summarize", "{data}"],
        stdout=True,
    ),
    Section(
        "conditional",
        "Conditional generation: following the class or the prompt, over guidance scales",
        [
            *_bench("conditional"),
            "--checkpoint",
            "digits2d_text",
            "--per-class",
            "30",
            "--scales",
            "0",
            "1",
            "2",
            "3",
            "4",
            "8",
            "--held-out-scales",
            "1",
            "3",
        ],
        "real data: a classifier's accuracy on held-out real samples, and real-vs-real within-class distances",
        long=True,
        stdout=True,
    ),
    Section(
        "lora_finetune",
        "LoRA vs full fine-tuning: texture2d (gravel) -> brick",
        [*_bench("lora_finetune"), "--output-dir", "runs/lora_finetune"],
        "full fine-tuning of every weight for the same steps, and the base without fine-tuning",
        long=True,
        stdout=True,
    ),
]
BY_NAME = {s.name: s for s in SECTIONS}


def _inline(name: str, quick: bool) -> str:
    """The sections measured in this process (the peers live in the same scripts)."""
    if name == "e2e":
        parts = []
        for preset in ("digits2d", "mnist1d", "porous3d"):
            out = Path("runs") / preset
            subprocess.run([sys.executable, str(HERE / "e2e_train.py"), "--preset", preset,
                            "--output-dir", str(out)], check=True)  # fmt: skip
            text = (out / "report.md").read_text()
            parts += ["### " + text.lstrip("# ").split("\n", 1)[0], "", text.split("\n", 1)[1].strip(), ""]
        return "\n".join(parts)
    import bench_attention
    import bench_samplers
    import bench_unet

    run: Callable[..., list[dict]] = {"unet": bench_unet.run, "attention": bench_attention.run,
                                      "samplers": bench_samplers.run}[name]  # fmt: skip
    return markdown_table(run(quick=quick))


def produce(section: Section, *, quick: bool, results: Path) -> None:
    """Run ``section``'s command and store its markdown and metadata under ``results``."""
    t0 = time.perf_counter()
    args = section.command + (section.quick_args if quick else [])
    if section.command[0] == "benchmarks/run_all.py":
        body = _inline(section.command[-1], quick)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.md"
            argv = [sys.executable, str(HERE.parent / args[0]), *args[1:]]
            if section.data_flag:
                argv += [section.data_flag, str(results / f"{section.name}.data.json")]
            if not section.stdout:
                argv += ["--out", str(out)]
            done = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True)
            body = done.stdout if section.stdout else out.read_text()
    body = "\n".join(line for line in body.splitlines() if not line.startswith("{"))  # JSON progress lines
    store(section, body, seconds=time.perf_counter() - t0, results=results, quick=quick)


def store(section: Section, body: str, *, seconds: float | None, results: Path, quick: bool = False) -> None:
    results.mkdir(parents=True, exist_ok=True)
    meta = {
        "title": section.title,
        "command": "python " + " ".join(section.command + (section.quick_args if quick else [])),
        "machine": machine_description(),
        "date": datetime.date.today().isoformat() + (" (quick run)" if quick else ""),
        "peer": section.peer,
        "seconds": None if seconds is None else round(seconds),
    }
    (results / f"{section.name}.md").write_text(body.strip("\n") + "\n")
    (results / f"{section.name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def rerender(section: Section, results: Path) -> bool:
    """Rebuild a section's markdown from its stored raw results; False when it has none."""
    data = results / f"{section.name}.data.json"
    if section.render is None or not data.exists():
        return False
    argv = [a.replace("{data}", str(data)) for a in section.render]
    done = subprocess.run([sys.executable, str(HERE.parent / argv[0]), *argv[1:]], check=True,
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    meta = json.loads((results / f"{section.name}.json").read_text())
    (results / f"{section.name}.md").write_text(done.stdout.strip("\n") + "\n")
    (results / f"{section.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return True


def assemble(results: Path) -> str:
    """BENCHMARKS.md from every stored section, in the order of SECTIONS."""
    parts = [
        "# polyscale benchmarks",
        "",
        "Current results only, every section produced by one command (`python benchmarks/run_all.py --list`);",
        "`make bench` reruns the quick ones, `python benchmarks/run_all.py --sections NAME` any one. Each",
        "section is stored under `benchmarks/results/`, and this file is assembled from them. How these",
        "results were reached: [docs/research-log.md](docs/research-log.md).",
        "",
    ]
    for s in SECTIONS:
        md, meta_file = results / f"{s.name}.md", results / f"{s.name}.json"
        if not md.exists():
            parts += [
                f"## {s.title}",
                "",
                f"Not produced yet: `python benchmarks/run_all.py --sections {s.name}`.",
                "",
            ]
            continue
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        took = f" ({meta['seconds']} s)" if meta.get("seconds") else ""
        text = md.read_text().strip("\n")
        first, _, rest = text.partition("\n")
        if first.lstrip("#").strip().startswith(s.title):  # the script's own heading repeats the section's
            text = rest.strip("\n")
        body = re.sub(r"^## ", "### ", text, flags=re.M)
        parts += [
            f"## {meta.get('title', s.title)}",
            "",
            f"Command: `{meta.get('command', 'python ' + ' '.join(s.command))}`{took}{' (long)' if s.long else ''}. "
            f"Machine: {meta.get('machine', 'not recorded')}. Date: {meta.get('date', 'not recorded')}. "
            f"Peer: {meta.get('peer', s.peer)}.",
            "",
            *([s.note, ""] if s.note else []),
            body,
            "",
        ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=str(HERE.parent / "BENCHMARKS.md"), help="the markdown file to assemble"
    )
    parser.add_argument(
        "--results", default=None, help="where sections are stored (default benchmarks/results)"
    )
    parser.add_argument("--sections", nargs="+", choices=list(BY_NAME), help="run these sections")
    parser.add_argument("--long", action="store_true", help="run every long section")
    parser.add_argument(
        "--render", action="store_true", help="run nothing: re-render stored results, assemble"
    )
    parser.add_argument("--quick", action="store_true", help="small cases only (a smoke run)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--inline", choices=["unet", "attention", "samplers", "e2e"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.list:
        for s in SECTIONS:
            print(f"{s.name:18s} {'long ' if s.long else 'quick'}  python {' '.join(s.command)}")
        return
    if args.inline:  # a section's own command line: print its markdown
        print(_inline(args.inline, args.quick))
        return
    results = Path(args.results) if args.results else (Path(tempfile.mkdtemp()) if args.quick else RESULTS)
    if args.render:
        names = []
        for s in SECTIONS:
            if rerender(s, results):
                names.append(s.name)
        print(f"[run_all] re-rendered from raw results: {names or 'none'}", file=sys.stderr)
    else:
        names = args.sections or [s.name for s in SECTIONS if s.long == args.long]
        for name in names:
            print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
            produce(BY_NAME[name], quick=args.quick, results=results)
    Path(args.out).write_text(assemble(results))
    print(f"[run_all] wrote {args.out} from {results}", file=sys.stderr)


if __name__ == "__main__":
    main()
