"""One model protocol (save_pretrained / from_pretrained), the --checkpoint resolver, one run-directory
settings check, and the growth commands' configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from polyscale.config import ConfigError
from polyscale.data.graphs import planar_graph, to_data
from polyscale.growth.sparse_grower import SparseGrower
from polyscale.io import PRETRAINED_ROOT, PretrainedMixin, read_model_dir, resolve_model_dir
from polyscale.nn.gpt import GPT, GPTConfig
from polyscale.nn.graph import GraphDenoiser
from polyscale.nn.sparse_mlp import SparseMLP
from polyscale.nn.unet import UNet
from polyscale.pipelines.experiment import load_experiment
from polyscale.pipelines.grow_config import (
    GrowDepthConfig,
    GrowSparseConfig,
    load_grow_depth_config,
    load_grow_sparse_config,
)
from polyscale.pipelines.train import train_experiment
from polyscale.training.run_dir import check_same_settings, read_settings


def randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random (zero-initialised heads would hide a weight that fails to load)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def roundtrip(net: torch.nn.Module, tmp_path: Path) -> torch.nn.Module:
    directory = net.save_pretrained(tmp_path / "model", metadata={"note": "test"})
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = type(net).from_pretrained(directory).eval()
    assert type(loaded) is type(net) and loaded.config == net.config
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    return loaded


@pytest.mark.parametrize("dims,size", [(1, 16), (2, 8), (3, 4)])
def test_unet_roundtrip_is_bit_identical(tmp_path, dims, size):
    net = randomised(UNet(dims=dims, in_channels=2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          attention_levels=(1,), attention_kernel_sizes=(3,), num_heads=2, norm_groups=4,
                          num_classes=3))  # fmt: skip
    loaded = roundtrip(net, tmp_path)
    x = torch.randn(2, 2, *([size] * dims), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2])
    assert torch.equal(net(x, 0.3, labels), loaded(x, 0.3, labels))


def test_graph_denoiser_roundtrip_is_bit_identical(tmp_path):
    net = randomised(GraphDenoiser(node_dim=2, edge_dim=3, hidden=16, num_layers=2, num_heads=2))
    loaded = roundtrip(net, tmp_path)
    d = to_data(planar_graph(20, rng=np.random.default_rng(0)))
    g = torch.Generator().manual_seed(2)
    x, m = torch.randn(20, 2, generator=g), d.edge_index.shape[1] // 2
    e = torch.randn(m, 3, generator=g)
    args = (x, d.edge_index, torch.cat([e, e]), torch.full((20,), 0.3))
    for a, b in zip(net(*args), loaded(*args), strict=True):
        assert torch.equal(a, b)


def test_gpt_roundtrip_after_layer_insertion_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    net.insert_layer(1)
    net = randomised(net)
    loaded = roundtrip(net, tmp_path)
    assert loaded.config.n_layer == 2 and loaded.lm_head.weight is loaded.wte.weight  # still tied
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(net(idx)[0], loaded(idx)[0])


def test_sparse_mlp_roundtrip_after_growth_surgery_is_bit_identical(tmp_path):
    net = SparseMLP(12, [8, 9], 5, skip=1, density=0.2, generator=torch.Generator().manual_seed(0))
    net.clone_units(1, [0, 3], 2)  # widens layer 2: the structure no fresh network of the config has
    free = (~net.blocks["2<-1"].mask().flatten()).nonzero().squeeze(1)[:3]
    net.connect("2<-1", free, torch.full((3,), 0.25))
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
    SparseGrower(high=0.6, low=0.4).grow(net, x, 50, generator=torch.Generator().manual_seed(2))
    assert net.sizes[2] == 11 and net.config.hidden_sizes == (8, 11)
    loaded = roundtrip(net, tmp_path)
    assert loaded.sizes == net.sizes and loaded.initial == net.initial
    assert {n: b.flat_index.tolist() for n, b in loaded.blocks.items()} == {
        n: b.flat_index.tolist() for n, b in net.blocks.items()
    }
    assert torch.equal(net(x), loaded(x))


def test_from_pretrained_refuses_another_class(tmp_path):
    SparseMLP(4, [3], 2).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"holds a SparseMLP, expected a GPT"):
        GPT.from_pretrained(tmp_path / "m")


def test_shipped_models_load_the_hugging_face_way():
    names = sorted(p.parent.name for p in PRETRAINED_ROOT.glob("*/config.json"))
    assert {"digits2d", "mnist1d", "porous3d", "texture2d"} <= set(names)
    by_name = UNet.from_pretrained("mnist1d")  # shipped models hold the EMA weights as their own
    by_path = UNet.from_pretrained(str(PRETRAINED_ROOT / "mnist1d"))  # a local path, the HF call shape
    assert isinstance(by_name, UNet) and isinstance(by_path, PretrainedMixin)
    assert by_name.config == by_path.config


def test_resolver_accepts_model_dir_run_dir_and_shipped_name(tmp_path):
    model_dir = SparseMLP(4, [3], 2).save_pretrained(tmp_path / "run" / "model")
    assert resolve_model_dir(model_dir) == model_dir
    assert resolve_model_dir(tmp_path / "run") == model_dir
    assert resolve_model_dir("digits2d") == PRETRAINED_ROOT / "digits2d"
    assert resolve_model_dir("digits2d", kind="UNet") == PRETRAINED_ROOT / "digits2d"
    with pytest.raises(ValueError, match="holds a SparseMLP, expected a UNet"):
        resolve_model_dir(tmp_path / "run", kind="UNet")
    with pytest.raises(FileNotFoundError, match=r"not a model directory, a run directory .*digits2d"):
        resolve_model_dir("no_such_model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_dir(tmp_path / "empty")


def test_sample_resolve_checkpoint_uses_the_one_resolver(tmp_path):
    from polyscale.pipelines.sample import resolve_checkpoint

    model_dir = SparseMLP(4, [3], 2).save_pretrained(tmp_path / "run" / "model")
    assert resolve_checkpoint(tmp_path / "run") == model_dir
    assert resolve_checkpoint("porous3d") == PRETRAINED_ROOT / "porous3d"


def test_check_same_settings_names_every_difference():
    check_same_settings({"a": 1, "b": {"c": (1, 2)}}, {"a": 1, "b": {"c": [1, 2]}})  # tuple == list
    with pytest.raises(ValueError) as err:
        check_same_settings({"lr": 0.1, "t": {"bs": 8}, "old": 1}, {"lr": 0.2, "t": {"bs": 16}, "new": 2})
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("lr: 0.1 -> 0.2", "t.bs: 8 -> 16", "old: 1 -> '<unset>'", "new: '<unset>' -> 2"):
        assert part in msg
    check_same_settings({"lr": 0.1, "epochs": 3}, {"lr": 0.1, "epochs": 9}, ignore=["epochs"])


TINY_TRAIN = ["model.base_channels=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
              "model.attention_levels=[1]", "model.attention_kernel_sizes=[3]", "model.num_heads=2",
              "train.max_steps=2", "train.batch_size=8", "train.warmup_steps=1", "train.checkpoint_every=2",
              "train.log_every=1", "train.progress=false"]  # fmt: skip


def test_train_refuses_to_resume_with_other_settings(tmp_path):
    out = tmp_path / "run"
    train_experiment(load_experiment("digits2d", overrides=TINY_TRAIN), out)
    assert {"config.yaml", "checkpoints", "model", "metrics.csv", "summary.json"} <= {
        p.name for p in out.iterdir()
    }
    assert read_settings(out)["train"]["lr"] == load_experiment("digits2d").train.lr
    assert UNet.from_pretrained(out).config.base_channels == 8  # the run directory resolves to model/
    changed = load_experiment("digits2d", overrides=[*TINY_TRAIN, "train.lr=0.5", "train.batch_size=16"])
    with pytest.raises(ValueError, match=r"train.batch_size: 8 -> 16, train.lr: .* -> 0.5\)") as err:
        train_experiment(changed, out)
    assert "\n" not in str(err.value)
    longer = load_experiment("digits2d", overrides=[*TINY_TRAIN, "train.max_steps=3"])
    assert train_experiment(longer, out).step == 3  # training further is not a change of settings
    train_experiment(changed, out, resume=False)  # starting over is always allowed
    assert read_settings(out)["train"]["lr"] == 0.5


def test_grow_configs_load_from_presets_with_overrides():
    sparse = load_grow_sparse_config("sparse_mnist1d", ["epochs=7", "hidden_sizes=[32, 16]"])
    assert sparse == GrowSparseConfig(epochs=7, hidden_sizes=(32, 16))
    assert load_grow_sparse_config() == load_grow_sparse_config("sparse_mnist1d")
    depth = load_grow_depth_config("depth_shakespeare", ["max_layers=6", "strategy=copy"])
    assert depth == GrowDepthConfig(max_layers=6, strategy="copy")
    assert load_grow_depth_config() == load_grow_depth_config("depth_shakespeare")


def test_grow_configs_reject_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="sparsity"):
        load_grow_sparse_config("sparse_mnist1d", ["sparsity=0.1"])  # renamed: connectivity
    with pytest.raises(ConfigError, match="connectivity .* must be in \\(0, 1\\], got 2.0"):
        load_grow_sparse_config(None, ["connectivity=2.0"])
    with pytest.raises(ConfigError, match="max_layers must be >= n_layer \\(3\\), got 2"):
        load_grow_depth_config(None, ["n_layer=3", "max_layers=2"])
    with pytest.raises(ConfigError, match="strategy"):
        load_grow_depth_config(None, ["strategy=widen"])
    path = tmp_path / "mine.yaml"
    path.write_text("n_embd: 32\nn_head: 2\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_grow_depth_config(path)
    with pytest.raises(ValueError, match="unknown growth preset 'nope'"):
        load_grow_sparse_config("nope")


def test_grow_sparse_refuses_to_resume_with_other_settings(tmp_path):
    from polyscale.pipelines.grow import grow_sparse

    cfg = GrowSparseConfig(dataset="digits", epochs=2, hidden_sizes=(8,), progress=False, checkpoint_every=1)
    grow_sparse(cfg, tmp_path)
    assert read_settings(tmp_path)["connectivity"] == 1e-4
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2
    assert read_model_dir(resolve_model_dir(tmp_path)).class_name == "SparseMLP"
    other = GrowSparseConfig(dataset="digits", epochs=2, hidden_sizes=(8,), progress=False, lr=0.5)
    with pytest.raises(ValueError, match=r"settings differ .*\(lr: 0.01 -> 0.5\)"):
        grow_sparse(other, tmp_path)
