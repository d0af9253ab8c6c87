"""Every command in the docs runs: each ``docs/*.md`` page (and the README's Use section) is executed top to bottom
in a fresh directory, ``bash`` blocks through the real CLI and ``python`` blocks with ``exec``.

Lines of a ``bash`` block are commands of three kinds, and nothing else is allowed there (so a new kind of
command cannot slip into the docs untested):

* ``polyscale ...`` (or ``.venv/bin/polyscale ...``), optionally after ``NAME=value`` environment
  assignments (set for that command only): run in-process through :func:`polyscale.cli.main.main`,
  which must return 0 and write every file it names. To keep the suite fast, the run is capped without changing
  which code runs: at most 2 samples and 2 denoising steps, and training (``train``, ``finetune``) stops after
  2 optimizer steps.
* ``make TARGET``: the target must exist in the Makefile (``make test`` is what CI runs).
  ``polyscale grow sparse`` runs at most 3 epochs, ``polyscale grow depth`` at most 40 steps of a 32-wide model.
* ``python benchmarks/X.py ...``: the script must exist and answer ``--help``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from polyscale.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
REFERENCE_PAGES = {
    "architecture.md",
    "research-log.md",
}  # maps and history: their commands (if any) still run
TRAIN_CAPS = [
    "--set", "train.max_steps=2", "--set", "train.checkpoint_every=2", "--set", "train.warmup_steps=1",
    "--set", "train.log_every=1", "--set", "train.batch_size=4",
]  # fmt: skip

pytestmark = pytest.mark.long  # every page runs real commands (10 s to 2 min each)


def blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block, in document order."""
    return re.findall(r"```(\w+)\n(.*?)```", page.read_text(), flags=re.S)


def commands(body: str) -> list[str]:
    """The commands of a bash block: one per line, comments and blank lines dropped."""
    lines = (re.sub(r"(^|\s+)#.*$", "", line).strip() for line in body.splitlines())
    return [line for line in lines if line]


FINETUNE_CAPS = [
    "--steps", "2", "--batch-size", "4", "--set", "train.checkpoint_every=2", "--set", "train.log_every=1",
]  # fmt: skip
GRAPH_TRAIN_CAPS = [
    "--set", "optimization.max_steps=2", "--set", "optimization.checkpoint_every=2",
    "--set", "optimization.warmup_steps=1", "--set", "optimization.log_every=1",
    "--set", "optimization.batch_size=4", "--set", "data.num_graphs=8",
    "--set", "diffusion.positions.max_steps=2",
]  # fmt: skip


def _cap_flag(argv: list[str], flag: str, cap: int, *, add: bool = True) -> None:
    """Every value after ``flag`` (one or more) capped at ``cap``; the flag added with ``cap`` when absent."""
    if flag not in argv:
        if add:
            argv += [flag, str(cap)]
        return
    i = argv.index(flag) + 1
    while i < len(argv) and not argv[i].startswith("--"):
        argv[i] = str(min(int(argv[i]), cap))
        i += 1


def capped(argv: list[str]) -> list[str]:
    """``argv`` of a polyscale command with the test caps of the module docstring applied."""
    argv = list(argv)
    if argv[:2] == ["graph", "train"]:
        return argv + GRAPH_TRAIN_CAPS
    if argv[0] == "graph":  # sample / evaluate: few small graphs, few steps
        for flag, cap in (("--num-graphs", 2), ("--timesteps", 2)):
            _cap_flag(argv, flag, cap)
        _cap_flag(argv, "--position-timesteps", 2, add=False)
        for flag in ("--num-nodes", "--sizes"):
            _cap_flag(argv, flag, 120, add=False)
        return argv
    if argv[0] == "train":
        return argv + TRAIN_CAPS
    if argv[0] == "finetune":  # the last --steps / --batch-size given wins
        return argv + FINETUNE_CAPS
    if argv[:2] == ["grow", "sparse"]:  # a few epochs of the same loop
        _cap_flag(argv, "--epochs", 3)
        return argv
    if argv[:2] == ["grow", "depth"]:  # a few steps, checks often enough that growth can happen
        for flag, cap in (("--max-steps", 40), ("--eval-interval", 20), ("--warmup-steps", 10),
                          ("--collect-interval", 5), ("--n-embd", 32)):  # fmt: skip
            _cap_flag(argv, flag, cap)
        return argv
    if argv[0] in ("sample", "evaluate"):
        for flag, cap in (("--num-samples", 2), ("--timesteps", 2)):
            if flag in argv:
                i = argv.index(flag) + 1
                argv[i] = str(min(int(argv[i]), cap))
            else:
                argv += [flag, str(cap)]
    return argv


def run_page(page: Path, tmp_path: Path, monkeypatch, capsys) -> int:
    monkeypatch.chdir(tmp_path)
    ran = 0
    for language, body in blocks(page):
        if language == "python":
            exec(compile(body, str(page), "exec"), {})  # noqa: S102 - our own docs, not user input
            ran += 1
        if language != "bash":
            continue
        for line in commands(body):
            words = shlex.split(line)
            env = {}
            while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]) and words[1:]:
                name, value = words.pop(0).split("=", 1)
                env[name] = value
            if env and words[0] not in ("polyscale", ".venv/bin/polyscale"):
                raise AssertionError(f"{page.name}: `{line}`: environment assignments only before polyscale")
            if words[0] in ("polyscale", ".venv/bin/polyscale"):
                with monkeypatch.context() as scoped:
                    for name, value in env.items():
                        scoped.setenv(name, value)
                    argv = capped(words[1:])
                    code = main(argv)
                out = capsys.readouterr()
                assert code == 0, f"{page.name}: `{line}` exited {code}: {out.err}"
                if "--output-file" in argv:
                    assert Path(argv[argv.index("--output-file") + 1]).is_file(), line
            elif words[0] == "make":
                makefile = (ROOT / "Makefile").read_text()
                assert re.search(rf"^{words[1]}:", makefile, flags=re.M), line
            elif words[:2] == [".venv/bin/python", "benchmarks/e2e_train.py"] or words[0] == "python":
                script = ROOT / next(w for w in words if w.endswith(".py"))
                assert script.is_file(), line
                subprocess.run([sys.executable, str(script), "--help"], check=True, capture_output=True)
            else:
                raise AssertionError(
                    f"{page.name}: `{line}` is not a command kind this test knows how to run"
                )
            ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_on_the_page_runs(page: Path, tmp_path: Path, monkeypatch, capsys):
    ran = run_page(page, tmp_path, monkeypatch, capsys)
    assert ran > 0 or page.name in REFERENCE_PAGES, f"{page.name} shows no command"


def test_every_task_has_a_page():
    names = {p.stem for p in PAGES}
    assert {"sampling", "training", "evaluation", "scale", "graphs"} <= names


def test_capping_keeps_the_command_and_bounds_its_cost():
    assert capped(["sample", "--num-samples", "16", "--dim", "2"]) == [
        "sample", "--num-samples", "2", "--dim", "2", "--timesteps", "2",
    ]  # fmt: skip
    assert capped(["train", "--preset", "digits2d"])[:3] == ["train", "--preset", "digits2d"]
    assert "train.max_steps=2" in capped(["train", "--preset", "x"])
    assert capped(["finetune", "--steps", "200"])[-len(FINETUNE_CAPS) :] == FINETUNE_CAPS
    assert capped(["graph", "evaluate", "--sizes", "64", "1000", "--num-graphs", "16"]) == [
        "graph", "evaluate", "--sizes", "64", "120", "--num-graphs", "2", "--timesteps", "2",
    ]  # fmt: skip
