"""Values that make no sense are refused when they arrive, in one line naming the key (or file) and what
arrived: non-finite numbers in every config, out-of-range growth settings, unknown samplers, and model
directories holding non-finite or mistyped weights, invalid JSON or truncated safetensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polyscale.cli.main import main
from polyscale.config import ConfigError
from polyscale.growth import GeometricExtrapolator, LossPlateau, StagnationDetector
from polyscale.io import save_pretrained
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.pipelines.experiment import load_experiment
from polyscale.pipelines.graph_config import load_graph_experiment
from polyscale.pipelines.grow_config import load_grow_depth_config, load_grow_sparse_config
from polyscale.training import TrainConfig

# --- configurations --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=.inf", "train.lr must be a finite number, got inf"),
        ("train.lr=.nan", "train.lr must be a finite number, got nan"),
        ("train.weight_decay=-.inf", "train.weight_decay must be a finite number, got -inf"),
        ("train.adam_betas=[0.9, .nan]", "train.adam_betas[1] must be a finite number, got nan"),
        ("train.grad_clip=.nan", "train.grad_clip must be a finite number, got nan"),
        ("train.grad_clip=-.inf", "train.grad_clip must be a finite number (or .inf for no limit), got -inf"),
        ("train.max_bad_steps=-1", "train.max_bad_steps must be an integer >= 0, got -1"),
        ("model.dropout=.inf", "model.dropout must be a finite number, got inf"),
        ("diffusion.sigma_data=.nan", "diffusion.sigma_data must be a finite number, got nan"),
        ("diffusion.sampler.sigma_max=.inf", "sampler.sigma_max must be a finite number, got inf"),
        ("diffusion.sampler.options={s_churn: .nan}", "diffusion.sampler.options.s_churn must be a finite number"),
        ("diffusion.sampler.name=foo", "unknown sampler 'foo'; expected one of ['ddim', 'ddpm', 'dpmpp2m', "),
        ("diffusion.sampler=foo", "unknown sampler 'foo'; expected one of ['ddim', 'ddpm', 'dpmpp2m', "),
        ("diffusion.sampler.options={eta: 1.0}", "unknown option 'eta' for sampler 'heun'; it accepts"),
    ],
)  # fmt: skip
def test_experiment_values_are_refused_at_load(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_experiment("digits2d", [override])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "digits2d.yaml with overrides" in str(err.value)  # where it came from


def test_no_limit_values_and_the_flat_sampler_spelling_still_load():
    cfg = load_experiment("digits2d", ["train.grad_clip=.inf", "diffusion.sampler.options={s_tmax: .inf}"])
    assert cfg.train.grad_clip == math.inf and cfg.diffusion.sampler.options == {"s_tmax": math.inf}
    preset = load_experiment("digits2d")
    flat = load_experiment("digits2d", ["diffusion.sampler=euler"])  # as older configs wrote it
    assert (
        flat.diffusion.sampler.name == "euler"
        and flat.diffusion.sampler.steps == preset.diffusion.sampler.steps
    )


def test_train_config_built_in_python_is_checked_too():
    with pytest.raises(ValueError, match=r"^train\.lr must be a finite number, got inf$"):
        TrainConfig(lr=math.inf).validate()
    TrainConfig(grad_clip=math.inf, max_bad_steps=3).validate()


@pytest.mark.parametrize(
    "override, message",
    [
        ("beta0=.nan", "beta0 must be a finite number, got nan"),
        ("gamma0=.inf", "gamma0 must be a finite number, got inf"),
        ("eta0=-0.5", "eta0 must be >= 0 (a gain; 0 turns its term off), got -0.5"),
        ("tau_crit=-1", "tau_crit must be >= 1 (the stretch factor path / chord is never below 1), got -1.0"),
        ("tau_crit=0.5", "tau_crit must be >= 1"),
        ("kappa_crit=-0.1", "kappa_crit must be >= 0 (the curvature is never negative), got -0.1"),
        ("lr=.inf", "lr must be a finite number, got inf"),
        ("pg_threshold=.nan", "pg_threshold must be a finite number, got nan"),
        ("max_bad_steps=-2", "max_bad_steps must be >= 0, got -2"),
    ],
)  # fmt: skip
def test_grow_depth_values(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_grow_depth_config("depth_shakespeare", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=.nan", "lr must be a finite number, got nan"),
        ("connectivity=.inf", "connectivity must be a finite number, got inf"),
        ("schedule={spike_threshold: .nan}", "schedule.spike_threshold must be a finite number, got nan"),
        ("max_bad_steps=-1", "max_bad_steps must be >= 0, got -1"),
    ],
)
def test_grow_sparse_values(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_grow_sparse_config("sparse_mnist1d", [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimization.lr=.inf", "optimization.lr must be a finite number, got inf"),
        ("diffusion.positions.max_jump=.inf", "diffusion.positions.max_jump must be a finite number, got inf"),
        ("data.periodic_share=.nan", "data.periodic_share must be a finite number, got nan"),
        ("data.candidates_max_length=-.inf", "data.candidates_max_length must be a finite number (or .inf"),
    ],
)  # fmt: skip
def test_graph_values(override: str, message: str):
    with pytest.raises(ValueError) as err:
        load_graph_experiment("graph_planar", [override])
    assert message in str(err.value)


def test_graph_no_limit_value_loads():
    cfg = load_graph_experiment(
        "graph_planar", ["data.candidates_max_length=.inf", "optimization.grad_clip=.inf"]
    )
    assert cfg.data.candidates_max_length == math.inf and cfg.optimization.grad_clip == math.inf


def test_growth_pieces_check_their_own_settings():
    with pytest.raises(ValueError, match=r"beta0 must be a finite gain >= 0 .*got nan"):
        GeometricExtrapolator(beta0=math.nan)
    with pytest.raises(ValueError, match=r"tau_crit must be a finite number >= 1 .*got 0.5"):
        GeometricExtrapolator(tau_crit=0.5)
    with pytest.raises(ValueError, match=r"kappa_crit must be a finite number >= 0 .*got inf"):
        StagnationDetector(kappa_crit=math.inf)
    with pytest.raises(ValueError, match=r"a finite threshold >= 0"):
        LossPlateau(threshold=math.nan)
    with pytest.raises(ValueError, match=r"the loss at step 7 is inf: training diverged before this check"):
        LossPlateau(warmup_steps=0).update(7, math.inf)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "digits2d", "--set", "train.lr=.inf"], "train.lr must be a finite number, got inf"),
        (["train", "--preset", "digits2d", "--set", "diffusion.sampler=foo"], "unknown sampler 'foo'"),
        (["grow", "depth", "--tau-crit", "-1"], "tau_crit must be >= 1"),
        (["grow", "depth", "--set", "beta0=.nan"], "beta0 must be a finite number, got nan"),
    ],
)  # fmt: skip
def test_cli_refuses_in_one_line_before_running(tmp_path: Path, capsys, argv: list[str], fragment: str):
    assert main([*argv, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err and err.startswith("polyscale ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value", [("--beta0", "nan"), ("--gamma0", "inf")])
def test_cli_grow_flags_refuse_non_finite_numbers(capsys, flag: str, value: str):
    with pytest.raises(SystemExit) as err:
        main(["grow", "depth", flag, value])
    assert err.value.code == 2
    assert f"expected a finite number, got '{value}'" in capsys.readouterr().err


# --- model directories -----------------------------------------------------------------------------------


def _saved_gpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8))
    return model.save_pretrained(tmp_path / "gpt")


def _edit_weights(directory: Path, name: str, change) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    tensors[name] = change(tensors[name])
    save_file(tensors, path, metadata={"format": "pt"})


def _nan_at_zero(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = math.nan
    return t


@pytest.mark.parametrize(
    "corrupt, fragment",
    [
        (lambda d: _edit_weights(d, "wte.weight", _nan_at_zero),
         "model.safetensors holds non-finite values in wte.weight: nan (1 of 56 values); it was saved from a "
         "diverged run"),
        (lambda d: _edit_weights(d, "blocks.0.ln_1.weight", lambda t: t * math.inf),
         "holds non-finite values in blocks.0.ln_1.weight: inf (8 of 8 values)"),
        (lambda d: _edit_weights(d, "wte.weight", lambda t: t.to(torch.int32)),
         "dtype mismatch ['wte.weight: the model expects floating point (torch.float32), the file holds "
         "torch.int32']"),
        (lambda d: (d / "config.json").write_text('{"format": "polyscale-model",'),
         "config.json is not valid JSON (Expecting"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:300]),
         "model.safetensors is not a readable safetensors file (corrupt or truncated?)"),
    ],
)  # fmt: skip
def test_model_directories_that_cannot_hold_a_working_model_are_refused(tmp_path: Path, corrupt, fragment):
    directory = _saved_gpt(tmp_path)
    assert GPT.from_pretrained(directory)  # loads before it is damaged
    corrupt(directory)
    with pytest.raises(ValueError) as err:
        GPT.from_pretrained(directory)
    msg = str(err.value)
    assert fragment in msg and str(directory) in msg and "\n" not in msg


def test_non_finite_weights_are_never_saved(tmp_path: Path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8))
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ema["ln_f.weight"] = torch.full((8,), math.nan)
    with pytest.raises(
        ValueError, match=r"non-finite weights to .*gpt: EMA parameter 'ln_f\.weight' holds nan"
    ):
        save_pretrained(model, tmp_path / "gpt", ema=ema)
    with torch.no_grad():
        model.wte.weight[0, 0] = -math.inf
    with pytest.raises(ValueError, match=r"model parameter 'wte\.weight' holds -inf \(1 of 56 values\)"):
        model.save_pretrained(tmp_path / "gpt")
    assert not (tmp_path / "gpt").exists()


def test_growth_files_that_are_damaged_are_refused_naming_them(tmp_path: Path):
    from polyscale.growth.layer_state import LayerStateManager
    from polyscale.growth.snapshots import SnapshotStore
    from polyscale.nn.sparse_mlp import SparseMLP

    layers = LayerStateManager(tmp_path / "layers")
    saved = layers.save_state(0, "init", {"w": torch.ones(4)}, 10)
    saved.write_bytes(saved.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"init_step10\.safetensors is not a readable safetensors file"):
        layers.load_state(0, "init", 10)
    (tmp_path / "layers" / "index.json").write_text("[{")
    with pytest.raises(ValueError, match=r"index\.json is not valid JSON \(Expecting"):
        LayerStateManager(tmp_path / "layers")

    store = SnapshotStore()
    net = SparseMLP(6, [4], 3, density=0.5, generator=torch.Generator().manual_seed(0))
    store.add(net, epoch=1, phase="static", reason="final", metric=0.5)
    path = store.save(tmp_path / "snapshots.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"snapshots\.safetensors is not a readable safetensors file"):
        SnapshotStore.load(path)
