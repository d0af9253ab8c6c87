"""SamplerConfig: validation (unknown options are errors naming the allowed ones), every registered sampler's
options accepted and run, the one entry point against the old direct call, sampler options reaching grid and
graph samplers through overrides, and old flat configurations migrating to the nested form."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from polyscale.config import ConfigError
from polyscale.diffusion import SAMPLERS, get_sampler, sigmas_karras
from polyscale.diffusion import sampling as sampling_module
from polyscale.diffusion.sampling import SamplerConfig, run_sampler, sampler_options, with_sampler
from polyscale.pipelines.experiment import experiment_from_dict, load_experiment
from polyscale.pipelines.graph_config import (
    GraphExperimentConfig,
    load_graph_experiment,
    migrate_graph_diffusion,
)
from polyscale.pipelines.graph_nets import edge_net, graph_denoiser, net_kwargs, position_denoiser
from polyscale.pipelines.graph_sample import GraphModel, generate_graphs
from polyscale.pipelines.sample import generate, load_denoiser, resolve_checkpoint, resolve_sampler


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
    """The exact denoiser of unit Gaussian data: ``x / (1 + sigma^2)``."""
    return x / (1 + sigma.view(-1, *([1] * (x.ndim - 1))) ** 2)


def test_defaults_and_validation_errors_name_what_is_allowed():
    cfg = SamplerConfig()
    assert (cfg.name, cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.options) == (
        "heun", 32, 0.002, 80.0, 7.0, {}
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown option 'eta' for sampler 'euler'; it accepts none"):
        SamplerConfig("euler", options={"eta": 0.5})
    with pytest.raises(
        ValueError, match=r"unknown option 's_churm' for sampler 'heun'; it accepts \['s_churn'"
    ):
        SamplerConfig("heun", options={"s_churm": 1.0})
    with pytest.raises(ValueError, match=r"unknown sampler 'langevin'; expected one of \['ddim'"):
        SamplerConfig("langevin")
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max, got 1.0 and 0.5"):
        SamplerConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="rho must be > 0, got 0"):
        SamplerConfig(rho=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_accepts_and_runs_its_own_options(name):
    options = sampler_options(name)
    assert not set(options) & {"denoiser", "x", "sigmas", "generator", "callback", "disable", "cond"}
    cfg = SamplerConfig(name, 3, sigma_max=5.0, options=options)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * cfg.sigma_max
    out = run_sampler(gaussian_denoiser, x, cfg, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_run_sampler_equals_the_direct_call_and_passes_options():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) * 80.0
    old = get_sampler("ddim")(gaussian_denoiser, x, sigmas_karras(4, 0.002, 80.0, rho=7.0),
                              generator=torch.Generator().manual_seed(1), disable=True)  # fmt: skip
    new = run_sampler(
        gaussian_denoiser, x, SamplerConfig("ddim", 4), generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(old, new)
    noisy = run_sampler(gaussian_denoiser, x, SamplerConfig("ddim", 4, options={"eta": 1.0}),
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert not torch.equal(noisy, new)


def test_with_sampler_keeps_only_the_options_the_new_sampler_takes():
    heun = SamplerConfig("heun", 8, options={"s_churn": 2.0})
    assert with_sampler(heun) is heun
    assert with_sampler(heun, steps=3).options == {"s_churn": 2.0}
    assert with_sampler(heun, "ddim").options == {} and with_sampler(heun, "ddim").steps == 8


def test_grid_sampler_option_changes_the_samples_and_the_default_is_the_old_call():
    denoiser, cfg, shape = load_denoiser("digits2d")
    flat = resolve_sampler(cfg, sampler="ddim", steps=3)
    assert flat == SamplerConfig("ddim", 3) and resolve_sampler(cfg).steps == 24  # the model's own
    noisy = resolve_sampler(cfg, sampler="ddim", steps=3, overrides=["sampler.options.eta=1.0"])
    assert noisy.options == {"eta": 1.0}
    assert resolve_sampler(cfg, overrides=["diffusion.sampler.steps=5"]).steps == 5
    with pytest.raises(ValueError, match="unknown option 'eta' for sampler 'heun'"):
        resolve_sampler(cfg, overrides=["sampler.options.eta=1.0"])
    with pytest.raises(ValueError, match=r"sampler.\* keys .*got \['model.base_channels=8'\]"):
        resolve_sampler(cfg, overrides=["model.base_channels=8"])
    size = (2, *shape)
    a = generate(denoiser, size, flat, generator=torch.Generator().manual_seed(0), progress=False)
    b = generate(denoiser, size, noisy, generator=torch.Generator().manual_seed(0), progress=False)
    assert not torch.equal(a, b)
    # the old direct call: noise at sigmas[0], then the sampler over the Karras schedule
    gen = torch.Generator().manual_seed(0)
    sigmas = sigmas_karras(3, 0.002, 80.0, rho=7.0)
    with torch.no_grad():
        old = get_sampler("ddim")(denoiser, torch.randn(size, generator=gen) * sigmas[0], sigmas, generator=gen,
                                  disable=True)  # fmt: skip
    assert torch.equal(a, old)


def test_shipped_flat_config_migrates_to_the_nested_form(tmp_path):
    meta = json.loads((resolve_checkpoint("digits2d") / "config.json").read_text())["metadata"]["experiment"]
    assert meta["diffusion"]["sampler"] == "heun" and "steps" in meta["diffusion"]  # stored flat, left as is
    cfg = experiment_from_dict(meta)
    assert cfg.diffusion.sampler == SamplerConfig("heun", meta["diffusion"]["steps"])
    # a user's YAML file in the old form loads too, and new-form overrides apply on top
    text = tmp_path / "old.yaml"
    text.write_text(
        "model: {dims: 2, in_channels: 1}\ndiffusion: {sampler: ddim, steps: 9, sigma_max: 40.0}\n"
    )
    old = load_experiment(text, ["diffusion.sampler.options.eta=0.5"])
    assert old.diffusion.sampler == SamplerConfig("ddim", 9, sigma_max=40.0, options={"eta": 0.5})


def test_graph_flat_diffusion_migrates_per_stage():
    flat = {"P_mean": -1.2, "P_std": 1.1, "sigma_data": 1.0, "sampler": "heun", "steps": 20, "sigma_max": 80.0,
            "position_sampler": None, "position_steps": 64, "position_s_churn": 10.0, "position_s_tmin": 0.05,
            "position_s_tmax": 1.0, "position_sigma_max": 3.0, "position_start": "stratified",
            "position_start_margin": 0.5, "position_jump_rate": 0.03, "position_max_jump": 5.0,
            "position_jump_schedule": [[0, 0.0]], "position_max_steps": 9, "position_P_mean": -0.8,
            "edge_P_mean": 1.0, "edge_P_std": 1.5}  # fmt: skip
    cfg = load_graph_experiment_dict({"task": "structure", "diffusion": flat})
    diff = cfg.diffusion
    churn = {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 1.0}
    assert diff.positions.sampler == SamplerConfig("heun", 64, sigma_max=3.0, options=churn)
    assert diff.edges.sampler == SamplerConfig("heun", 20) and diff.sampler == SamplerConfig("heun", 20)
    assert (diff.positions.start, diff.positions.start_margin, diff.positions.max_steps) == (
        "stratified",
        0.5,
        9,
    )
    assert (diff.positions.P_std, diff.edges.P_mean, diff.edges.P_std) == (1.1, 1.0, 1.5)
    # a positions sampler without churn sampled without it: the migrated config says so
    pc = migrate_graph_diffusion({**flat, "position_sampler": "pc"})
    assert "options" not in pc["positions"]["sampler"] and pc["positions"]["sampler"]["name"] == "pc"
    assert migrate_graph_diffusion({"sampler": {"name": "euler"}}) == {"sampler": {"name": "euler"}}


def load_graph_experiment_dict(data: dict) -> GraphExperimentConfig:
    from polyscale.config import load_config
    from polyscale.pipelines.graph_config import migrate_graph_experiment

    return load_config(GraphExperimentConfig, migrate_graph_experiment(data))


CHURN_SAMPLERS = [name for name in sorted(SAMPLERS) if "s_churn" in sampler_options(name)]


@pytest.mark.parametrize("name", CHURN_SAMPLERS)
def test_graph_churn_override_reaches_every_sampler_that_takes_it(name, monkeypatch):
    cfg = load_graph_experiment("graph_planar", ["model.hidden=8", "model.num_layers=1", "model.num_heads=2"])
    model = GraphModel(cfg, positions=position_denoiser(cfg.model),
                       edges=graph_denoiser(edge_net(**net_kwargs(cfg.model))))  # fmt: skip
    seen = []
    real = SAMPLERS[name]

    @functools.wraps(real)  # the same signature, so the same options are allowed
    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("s_churn", "s_tmin")})
        return real(*args, **kwargs)

    monkeypatch.setitem(sampling_module.SAMPLERS, name, spy)
    overrides = [f"positions.sampler.name={name}", "positions.sampler.options.s_churn=0.5",
                 "diffusion.positions.sampler.options.s_tmin=0.1"]  # fmt: skip
    generate_graphs(model, 12, 1, steps=2, overrides=overrides)
    assert seen[0] == {"s_churn": 0.5, "s_tmin": 0.1}  # the positions stage
    assert seen[1] == {"s_churn": None, "s_tmin": None}  # the edge stage keeps its own options
    # --sampler NAME for every stage keeps the churn of a sampler that takes it
    seen.clear()
    generate_graphs(model, 12, 1, sampler=name, steps=2, overrides=overrides)
    assert seen[0] == {"s_churn": 0.5, "s_tmin": 0.1}
    with pytest.raises(ConfigError, match="unknown option 's_churm'"):
        generate_graphs(model, 12, 1, overrides=["positions.sampler.options.s_churm=0.5"])
