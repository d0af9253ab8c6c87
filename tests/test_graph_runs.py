"""Graph run directories and what `polyscale graph` shows: the run directory layout (config.yaml, summary.json,
refused resumes), the forms `--checkpoint` accepts, and the labelled sampling progress bars."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from polyscale.cli.main import main
from polyscale.diffusion.samplers import _common
from polyscale.diffusion.sampling import SamplerConfig, run_sampler
from polyscale.pipelines import graph_sample
from polyscale.pipelines.graph_sample import load_graph_model, resolve_graph_checkpoint
from polyscale.training.run_dir import read_settings

TINY = ["--set", "optimization.max_steps=2", "--set", "optimization.batch_size=4", "--set", "data.num_graphs=8",
        "--set", "model.hidden=16", "--set", "model.num_layers=1", "--set", "optimization.checkpoint_every=2",
        "--set", "optimization.log_every=1", "--set", "optimization.warmup_steps=1",
        "--set", "diffusion.positions.max_steps=2"]  # fmt: skip


def _spy_labels(monkeypatch) -> list[str]:
    """Record the label of every sampling progress bar that would show."""
    labels: list[str] = []
    real = _common.trange

    def spy(*args, desc=None, disable=None, **kwargs):
        if not disable:
            labels.append(desc)
        return real(*args, desc=desc, disable=True, **kwargs)

    monkeypatch.setattr(_common, "trange", spy)
    return labels


def test_run_sampler_labels_its_bar_and_keeps_the_default(monkeypatch):
    labels = _spy_labels(monkeypatch)
    x = torch.randn(3, 2)
    for name in ("euler", "heun", "ddim", "ddpm", "pc", "dpmpp2m", "ode"):
        cfg = SamplerConfig(name=name, steps=2, sigma_max=1.0)
        run_sampler(lambda x, s: x * 0, x * cfg.sigma_max, cfg, progress=True, desc=f"{name} bar")
    run_sampler(lambda x, s: x * 0, x, SamplerConfig(steps=2, sigma_max=1.0), progress=True)
    run_sampler(lambda x, s: x * 0, x, SamplerConfig(steps=2, sigma_max=1.0), desc="hidden")  # no progress
    assert labels == [f"{n} bar" for n in ("euler", "heun", "ddim", "ddpm", "pc", "dpmpp2m", "ode")] + [
        "sampling"
    ]


@pytest.fixture(scope="module")
def planar_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("graph") / "planar"
    assert main(["graph", "train", "--preset", "graph_planar", "--output-dir", str(run), *TINY]) == 0
    return run


def test_structure_run_layout_and_a_changed_setting_is_refused_on_resume(planar_run, capsys):
    for stage in ("positions", "edges"):
        settings = read_settings(planar_run / stage)
        assert settings is not None and settings["task"] == "structure"
        assert settings["optimization"]["output_dir"] == str(planar_run / stage)
        summary = json.loads((planar_run / stage / "summary.json").read_text())
        assert summary["role"] == stage and summary["steps"] == 2 and summary["model"] == "model"
    capsys.readouterr()
    # resuming with the same settings (more steps, another sampler) goes on; a changed lr is refused
    again = [*TINY, "--set", "optimization.max_steps=3", "--set", "diffusion.edges.sampler.steps=4"]
    assert main(["graph", "train", "--preset", "graph_planar", "--output-dir", str(planar_run), *again]) == 0
    capsys.readouterr()
    changed = [*TINY, "--set", "optimization.lr=0.5"]
    assert (
        main(["graph", "train", "--preset", "graph_planar", "--output-dir", str(planar_run), *changed]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optimization.lr: 0.001 -> 0.5" in err
    assert read_settings(planar_run / "positions")["optimization"]["lr"] == 0.001  # nothing was overwritten


def test_checkpoint_accepts_the_run_a_stage_or_a_model_directory(planar_run, tmp_path, capsys):
    want = {"positions": planar_run / "positions" / "model", "edges": planar_run / "edges" / "model"}
    for form in (planar_run, planar_run / "positions", planar_run / "edges" / "model"):
        assert resolve_graph_checkpoint(form) == want
    model = load_graph_model(planar_run / "edges")
    assert model.positions is not None and model.edges is not None
    with pytest.raises(FileNotFoundError, match="holds no graph model: expected a graph run directory"):
        resolve_graph_checkpoint(tmp_path / "nothing")
    half = tmp_path / "half"
    shutil.copytree(planar_run / "positions", half / "positions")
    with pytest.raises(FileNotFoundError, match="whose edges stage has no model yet"):
        resolve_graph_checkpoint(half / "positions" / "model")
    assert main(["graph", "sample", "--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "or a shipped model" in err


def test_graph_sample_and_evaluate_label_their_progress(planar_run, tmp_path, monkeypatch):
    labels = _spy_labels(monkeypatch)
    argv = ["graph", "sample", "--checkpoint", str(planar_run / "positions" / "model"), "--num-nodes", "30"]
    assert (
        main([*argv, "--num-graphs", "2", "--timesteps", "2", "--output-file", str(tmp_path / "g.png")]) == 0
    )
    assert labels == ["positions, graph 1/2, 30 nodes", "edges, graph 1/2",
                      "positions, graph 2/2, 30 nodes", "edges, graph 2/2"]  # fmt: skip
    labels.clear()
    argv = ["graph", "evaluate", "--checkpoint", str(planar_run), "--sizes", "20", "--num-graphs", "1"]
    assert main([*argv, "--timesteps", "2"]) == 0
    assert labels == ["positions, graph 1/1, 20 nodes", "edges, graph 1/1"]


def test_features_run_is_its_own_run_directory_and_labels_its_bars(tmp_path, monkeypatch, capsys):
    run = tmp_path / "features"
    assert main(["graph", "train", "--preset", "graph_features", "--output-dir", str(run), *TINY]) == 0
    assert read_settings(run)["task"] == "features" and (run / "summary.json").is_file()
    assert (
        resolve_graph_checkpoint(run)
        == resolve_graph_checkpoint(run / "model")
        == {"features": run / "model"}
    )
    labels = _spy_labels(monkeypatch)
    graph_sample.generate_graphs(load_graph_model(run / "model"), 20, 2, steps=2, progress=True)
    assert labels == ["features, graph 1/2", "features, graph 2/2"]
    labels.clear()
    assert main(["graph", "evaluate", "--checkpoint", str(run), "--sizes", "20", "--num-graphs", "1",
                 "--timesteps", "2"]) == 0  # fmt: skip
    assert labels == ["features, graph 1/1, 20 nodes"]
    # a run written before config.yaml (experiment.yaml at the top) is still checked on resume
    (run / "config.yaml").rename(run / "experiment.yaml")
    capsys.readouterr()
    argv = ["graph", "train", "--preset", "graph_features", "--output-dir", str(run), *TINY]
    assert main([*argv, "--set", "optimization.lr=0.5"]) == 2
    assert "optimization.lr: 0.001 -> 0.5" in capsys.readouterr().err
