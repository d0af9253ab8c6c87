"""Texture photographs from scikit-image: value range, disjoint train/held-out bands, crops, errors."""

from __future__ import annotations

import pytest
import skimage.data
import torch

from polyscale.data import TEXTURES, RandomCrops, texture
from polyscale.pipelines.datasets import build_dataset
from polyscale.pipelines.experiment import load_experiment


@pytest.mark.parametrize("name", TEXTURES)
def test_texture_is_the_photograph_in_minus_one_one(name: str):
    ds = texture(name, downsample=1)
    original = torch.from_numpy(getattr(skimage.data, name)()).double() / 255
    assert ds.data.shape == (1, 1, 512, 512)
    torch.testing.assert_close(ds.denormalize(ds.data[0, 0]).double(), original, atol=1e-6, rtol=0)
    assert -1 <= float(ds.data.min()) and float(ds.data.max()) <= 1


def test_downsample_is_an_area_average():
    full, half = texture("gravel", downsample=1), texture("gravel", downsample=2)
    assert half.data.shape == (1, 1, 256, 256)
    torch.testing.assert_close(half.data[0, 0, 3, 5], full.data[0, 0, 6:8, 10:12].mean())


def test_train_and_test_bands_are_disjoint_and_cover_the_image():
    whole = texture("gravel")
    test, train = texture("gravel", split="test"), texture("gravel", split="train")
    assert test.data.shape == (1, 1, 128, 256) and train.data.shape == (1, 1, 128, 256)
    assert torch.equal(torch.cat([test.data, train.data], dim=2), whole.data)
    uneven = texture("gravel", split="test", test_fraction=0.25)
    assert uneven.data.shape == (1, 1, 64, 256)


def test_preset_builds_random_crops_of_the_training_band():
    cfg = load_experiment("texture2d")
    ds = build_dataset(cfg.data, split="train")
    assert isinstance(ds, RandomCrops) and len(ds) == cfg.data.num_samples
    band = texture(cfg.data.image, split="train", downsample=cfg.data.downsample).data[0]
    x = ds[7]["x"]
    assert x.shape == (1, 32, 32)
    i, j = ds.window(7)
    assert torch.equal(x, band[:, i : i + 32, j : j + 32])
    ds.set_epoch(1)
    assert not torch.equal(ds[7]["x"], x)  # new windows each epoch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="marble"), "unknown texture 'marble'"),
        (dict(downsample=0), "downsample must be an integer >= 1"),
        (dict(split="val"), "split must be 'train', 'test' or None"),
        (dict(test_fraction=1.0), "test_fraction must be in (0, 1)"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        texture(**kwargs)


def test_texture_without_crop_size_is_an_error():
    cfg = load_experiment("texture2d", overrides=["data.crop_size=null"])
    with pytest.raises(ValueError, match="needs data.crop_size"):
        build_dataset(cfg.data, split="train")
