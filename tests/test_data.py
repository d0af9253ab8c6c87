"""Datasets: shapes, value ranges and their inverse maps, labels, determinism, error messages; porous media
statistics against closed forms (Gaussian covariance, bivariate-normal orthant probabilities) and against
brute-force two-point correlations; file loaders round-trip what was written."""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from polyscale.data import (
    IMAGE_EXTENSIONS,
    GridDataset,
    RandomCrops,
    array_file,
    correlation_length,
    digits,
    gaussian_random_field,
    image_folder,
    mnist1d,
    porosity,
    porous_media,
    split_indices,
    two_point_correlation,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- GridDataset


def test_grid_dataset_items_collate_to_batches():
    ds = GridDataset(torch.randn(6, 2, 5, 7), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert (len(ds), ds.channels, ds.spatial_shape, ds.dims, ds.num_classes) == (6, 2, (5, 7), 2, 3)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["x"].shape == (4, 2, 5, 7) and batch["x"].dtype == torch.float32
    assert batch["class_labels"].shape == (4,) and batch["class_labels"].dtype == torch.int64
    assert torch.equal(batch["x"], ds.data[:4])
    assert set(GridDataset(torch.randn(3, 1, 4))[0]) == {"x"}


def test_grid_dataset_value_map_round_trips():
    ds = GridDataset(torch.rand(4, 1, 8) * 2 - 1, scale=0.5, shift=0.5)
    x = torch.rand(3, 1, 8)
    torch.testing.assert_close(ds.denormalize(ds.normalize(x)), x)
    assert (
        float(ds.denormalize(torch.tensor(-1.0))) == 0.0 and float(ds.denormalize(torch.tensor(1.0))) == 1.0
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data=torch.randn(4, 8)), r"\(N, C, \*spatial\).*got shape \(4, 8\)"),
        (dict(data=torch.randn(4, 1, 2, 2, 2, 2)), "1-3 spatial axes"),
        (dict(data=torch.randn(0, 1, 4)), "at least one sample"),
        (dict(data=torch.randn(3, 1, 4), labels=torch.tensor([0.0, 1.0, 1.0])), "integer.*float32"),
        (dict(data=torch.randn(3, 1, 4), labels=torch.tensor([0, 1])), r"shape \(3,\).*got \(2,\)"),
        (dict(data=torch.randn(3, 1, 4), labels=torch.tensor([0, -1, 1])), ">= 0"),
        (dict(data=torch.randn(3, 1, 4), labels=torch.tensor([0, 5, 1]), num_classes=3), "< num_classes=3"),
        (dict(data=torch.randn(2, 1, 4), labels=torch.tensor([0, 1]), class_names=["a"]), "2 class_names"),
        (dict(data=torch.randn(2, 1, 4), scale=0.0), "non-zero"),
    ],
)
def test_grid_dataset_rejects_bad_input(kwargs, match):
    data = kwargs.pop("data")
    labels = kwargs.pop("labels", None)
    with pytest.raises(ValueError, match=match):
        GridDataset(data, labels, **kwargs)


def test_split_indices_partition_and_determinism():
    train, test = split_indices(100, "train", seed=3), split_indices(100, "test", seed=3)
    assert len(test) == 20 and len(train) == 80
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(100))
    assert torch.equal(test, split_indices(100, "test", seed=3))
    assert not torch.equal(test, split_indices(100, "test", seed=4))
    with pytest.raises(ValueError, match="'train', 'test' or None, got 'val'"):
        split_indices(10, "val", seed=0)


# ---------------------------------------------------------------------------------------------------- digits


@pytest.mark.parametrize("size", [16, 32])
def test_digits_shapes_range_labels(size):
    ds = digits(size=size)
    assert ds.data.shape == (1797, 1, size, size) and ds.data.dtype == torch.float32
    assert float(ds.data.min()) == -1.0 and float(ds.data.max()) == 1.0
    assert ds.num_classes == 10 and torch.equal(ds.labels.unique(), torch.arange(10))
    natural = ds.denormalize(ds.data)
    assert 0 <= float(natural.min()) and float(natural.max()) <= 1
    torch.testing.assert_close(ds.denormalize(ds.normalize(natural)), natural)
    torch.testing.assert_close(ds.normalize(ds.denormalize(ds.data)), ds.data)
    # shrinking back to 8x8 recovers the original pixels closely (the resize is a smooth upsampling)
    from sklearn.datasets import load_digits

    original = torch.tensor(load_digits().images, dtype=torch.float32) / 16  # (1797, 8, 8) in [0, 1]
    back = torch.nn.functional.adaptive_avg_pool2d(natural, 8)[:, 0]
    assert float(torch.corrcoef(torch.stack([back.flatten(), original.flatten()]))[0, 1]) > 0.97


def test_digits_size_8_is_the_original_data_and_labels():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = digits(size=8)
    torch.testing.assert_close(ds.data[:, 0], torch.tensor(bunch.images, dtype=torch.float32) / 8 - 1)
    assert torch.equal(ds.labels, torch.tensor(bunch.target))


def test_digits_split_is_deterministic_held_out_subset():
    full, train, test = digits(size=16), digits(size=16, split="train"), digits(size=16, split="test")
    assert len(train) + len(test) == 1797 and len(test) == round(1797 * 0.2)
    idx = split_indices(1797, "test", seed=0)
    assert torch.equal(test.data, full.data[idx]) and torch.equal(test.labels, full.labels[idx])
    assert torch.equal(digits(size=16, split="test").data, test.data)
    assert not torch.equal(digits(size=16, split="test", seed=1).labels, test.labels)
    with pytest.raises(ValueError, match="size must be >= 4"):
        digits(size=2)


# --------------------------------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_labels_scale_split():
    full = mnist1d(num_samples=200)
    train, test = mnist1d(num_samples=200, split="train"), mnist1d(num_samples=200, split="test")
    assert full.data.shape == (200, 1, 40) and (len(train), len(test)) == (160, 40)
    assert full.spatial_shape[0] % 8 == 0
    assert full.num_classes == 10 and full.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(full.labels), torch.full((10,), 20))  # balanced classes
    assert torch.equal(torch.cat([train.data, test.data]), full.data)
    assert abs(float(full.data.mean())) < 1e-4 and abs(float(full.data.std()) - 1) < 1e-2
    torch.testing.assert_close(full.denormalize(full.data), full.data)
    assert mnist1d(num_samples=100, length=32).data.shape == (100, 1, 32)


def test_mnist1d_matches_the_package_generator_and_is_deterministic():
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 100, 7
    raw = make_dataset(args)
    ds = mnist1d(num_samples=100, seed=7, split="test")
    torch.testing.assert_close(ds.data[:, 0], torch.tensor(raw["x_test"], dtype=torch.float32))
    assert torch.equal(ds.labels, torch.tensor(raw["y_test"]))
    assert torch.equal(mnist1d(num_samples=100, seed=7).data, mnist1d(num_samples=100, seed=7).data)
    assert not torch.equal(mnist1d(num_samples=100, seed=8).data, mnist1d(num_samples=100, seed=7).data)


def test_mnist1d_leaves_global_rngs_alone_and_rejects_bad_input():
    np.random.seed(123)
    random.seed(123)
    mnist1d(num_samples=50)
    expected_np, expected_py = np.random.RandomState(123).rand(), random.Random(123).random()
    assert np.random.rand() == expected_np and random.random() == expected_py
    with pytest.raises(ValueError, match="got 'valid'"):
        mnist1d(num_samples=50, split="valid")
    with pytest.raises(ValueError, match=">= 10.*got 5"):
        mnist1d(num_samples=5)


# ---------------------------------------------------------------------------------------------- porous media


@pytest.mark.parametrize("dims, size", [(2, 32), (3, 16)])
@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.7])
def test_porous_media_hits_requested_porosity(dims, size, target):
    ds = porous_media(4, size=size, dims=dims, porosity=target, correlation_length=2.0, generator=gen())
    assert ds.data.shape == (4, 1, *(size,) * dims)
    assert set(ds.data.unique().tolist()) == {-1.0, 1.0}
    assert (porosity(ds.data, per_sample=True) - target).abs().max() < 0.01
    assert set(ds.denormalize(ds.data).unique().tolist()) == {0.0, 1.0}


def test_porous_media_is_deterministic_and_any_shape_works():
    a = porous_media(2, size=(12, 20), dims=2, generator=gen(5)).data
    assert a.shape == (2, 1, 12, 20) and torch.equal(
        a, porous_media(2, size=(12, 20), dims=2, generator=gen(5)).data
    )
    assert not torch.equal(a, porous_media(2, size=(12, 20), dims=2, generator=gen(6)).data)
    line = porous_media(3, size=101, dims=1, porosity=0.4, generator=gen())
    assert line.data.shape == (3, 1, 101) and torch.equal(
        porosity(line.data, per_sample=True), torch.full((3,), 40 / 101, dtype=torch.float64)
    )


@pytest.mark.long
def test_stationary_porous_media_are_one_process_at_every_size():
    """stationary=True: every voxel is pore with probability `porosity` (the pore fraction of a sample
    fluctuates around it) and the two-point statistics of a 12^3 sample are those of a 36^3 one; the
    per-sample threshold (stationary=False) makes the correlation length drift with the size instead."""
    from polyscale.data.porous import gaussian_random_field
    from polyscale.metrics.porous import correlation_length, two_point_correlation

    field = gaussian_random_field(
        512, (16, 16, 16), correlation_length=2.0, generator=gen(3), stationary=True
    )
    # exact pointwise std (the tolerances are ~3 standard errors of these correlated means)
    assert abs(float(field.mean())) < 0.03 and abs(float(field.square().mean()) - 1) < 0.06
    small = porous_media(1024, size=12, dims=3, porosity=0.3, correlation_length=2.0, generator=gen(1),
                         stationary=True).data  # fmt: skip
    large = porous_media(27, size=36, dims=3, porosity=0.3, correlation_length=2.0, generator=gen(2),
                         stationary=True).data  # fmt: skip
    assert set(small.unique().tolist()) == {-1.0, 1.0}
    for x in (small, large):
        assert abs(float(porosity(x)) - 0.3) < 0.01
    assert float(porosity(small, per_sample=True).std()) > 0.05  # not forced per sample
    lengths = [float(correlation_length(two_point_correlation(x, periodic=False))) for x in (small, large)]
    assert abs(lengths[0] - lengths[1]) < 0.1, lengths
    exact_small = porous_media(
        1024, size=12, dims=3, porosity=0.3, correlation_length=2.0, generator=gen(1)
    ).data
    exact = float(correlation_length(two_point_correlation(exact_small, periodic=False)))
    assert lengths[1] - exact > 0.2, (exact, lengths)  # the per-sample quantile shortens small samples


def test_gaussian_random_field_covariance_is_gaussian():
    """Filtering white noise with a Gaussian of std l gives covariance rho(r) = exp(-r^2 / (4 l^2)); removing
    each sample's mean turns it into (rho - c) / (1 - c) with c = sum_r rho(r) / V = 4 pi l^2 / V in 2D."""
    l, side = 2.0, 64
    field = gaussian_random_field(64, (side, side), correlation_length=l, generator=gen(1))
    assert field.shape == (64, side, side) and field.dtype == torch.float64
    c = 4 * math.pi * l**2 / side**2
    for r in range(7):
        cov = 0.5 * ((field * field.roll(r, 1)).mean() + (field * field.roll(r, 2)).mean())
        assert abs(float(cov) - (math.exp(-(r**2) / (4 * l**2)) - c) / (1 - c)) < 0.03, r


def test_gaussian_random_field_equals_scipy_periodic_gaussian_filter():
    """Peer oracle on the same white noise: scipy's spatial Gaussian filter with wrap-around boundaries."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_random_field(3, (20, 24, 16), correlation_length=2.5, generator=gen(0))
    noise = torch.randn((3, 20, 24, 16), generator=gen(0), dtype=torch.float64).numpy()  # the same draw
    ref = torch.from_numpy(np.stack([gaussian_filter(n, 2.5, mode="wrap", truncate=10) for n in noise]))
    ref = (ref - ref.mean(dim=(1, 2, 3), keepdim=True)) / ref.std(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(field, ref, rtol=0, atol=1e-9)


def test_porous_two_point_probability_matches_bivariate_normal():
    """S2 of a thresholded Gaussian field: P(Z1 > u, Z2 > u) for correlation rho, phi = P(Z > u):
    S2 = phi^2 + int_0^rho exp(-u^2 / (1 + t)) / (2 pi sqrt(1 - t^2)) dt (orthant-probability integral)."""
    from scipy.integrate import quad
    from scipy.stats import norm

    phi, l = 0.3, 2.5
    u = norm.ppf(1 - phi)

    def s2_exact(rho: float) -> float:
        integrand = lambda t: math.exp(-(u**2) / (1 + t)) / (2 * math.pi * math.sqrt(1 - t * t))  # noqa: E731
        return phi**2 + quad(integrand, 0, rho)[0]

    assert abs(s2_exact(1.0) - phi) < 1e-6  # the closed form itself: S2(0) = phi
    media = porous_media(64, size=64, dims=2, porosity=phi, correlation_length=l, generator=gen(2))
    pores = (media.data[:, 0] > 0).double()  # (64, 64, 64)
    for r in range(0, 12, 2):
        measured = 0.5 * ((pores * pores.roll(r, 1)).mean() + (pores * pores.roll(r, 2)).mean())
        assert abs(float(measured) - s2_exact(math.exp(-(r**2) / (4 * l**2)))) < 0.01, r


def _s2_brute_force(x: torch.Tensor, max_radius: int, *, periodic: bool) -> torch.Tensor:
    """S2 by looping over every lag vector: the mean product of each voxel with its shifted partner."""
    pores = (x[:, 0] > 0).double()
    spatial = pores.shape[1:]
    sums, counts = torch.zeros(max_radius + 1, dtype=torch.float64), torch.zeros(max_radius + 1)
    ranges = [range(n) if periodic else range(-n + 1, n) for n in spatial]
    for lag in np.ndindex(*(len(r) for r in ranges)):
        pairs = [(ranges[a][i], n) for a, (i, n) in enumerate(zip(lag, spatial, strict=True))]  # (lag, size)
        r = round(math.sqrt(sum(min(v, n - v) ** 2 if periodic else v**2 for v, n in pairs)))
        if r > max_radius:
            continue
        if periodic:
            value = (pores * pores.roll(tuple(-v for v, _ in pairs), tuple(range(1, pores.ndim)))).mean()
        else:  # the voxels x with x + lag inside the sample, times their partners
            a = pores[(slice(None), *(slice(max(0, -v), n - max(0, v)) for v, n in pairs))]
            b = pores[(slice(None), *(slice(max(0, v), n - max(0, -v)) for v, n in pairs))]
            value = (a * b).mean()
        sums[r] += value
        counts[r] += 1
    return sums / counts


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("shape", [(11,), (6, 9), (5, 4, 6)])
def test_two_point_correlation_matches_brute_force(shape, periodic):
    x = torch.randn(3, 1, *shape, generator=gen(4))
    max_radius = min(shape) // 2 if periodic else min(shape) - 1
    fast = two_point_correlation(x, max_radius=max_radius, periodic=periodic)
    torch.testing.assert_close(fast, _s2_brute_force(x, max_radius, periodic=periodic), rtol=1e-9, atol=1e-12)
    assert abs(float(fast[0]) - float(porosity(x))) < 1e-12


def test_two_point_correlation_of_stripes_is_known():
    stripes = torch.tensor([1.0, 1.0, -1.0, -1.0] * 4)[None, None]  # (1, 1, 16), period 4, half pore
    torch.testing.assert_close(
        two_point_correlation(stripes, max_radius=4),
        torch.tensor([0.5, 0.25, 0.0, 0.25, 0.5], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="max_radius must be in"):
        two_point_correlation(stripes, max_radius=9)
    with pytest.raises(ValueError, match=r"\(N, 1, \*spatial\)"):
        two_point_correlation(torch.zeros(2, 3, 8, 8))


def test_normalised_correlation_removes_the_porosity_offset():
    from polyscale.metrics.porous import normalised_correlation

    r = torch.arange(8, dtype=torch.float64)
    shape = torch.exp(-r / 2.0)
    for phi in (0.2, 0.3, 0.45):
        s2 = phi**2 + (phi - phi**2) * shape
        torch.testing.assert_close(normalised_correlation(s2), shape)
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        normalised_correlation(torch.ones(5))


def test_correlation_length_of_exponential_decay_and_of_media():
    phi, r = 0.3, torch.arange(10, dtype=torch.float64)
    s2 = phi**2 + (phi - phi**2) * torch.exp(-r / 3.0)  # C(r) = exp(-r / 3): 1/e at r = 3
    assert abs(float(correlation_length(s2)) - 3.0) < 1e-9
    assert math.isinf(float(correlation_length(phi**2 + (phi - phi**2) * torch.exp(-r / 30.0))))
    for dims, size in [(2, 64), (3, 32)]:
        media = [
            porous_media(8, size=size, dims=dims, correlation_length=l, generator=gen(3)) for l in (1.5, 3)
        ]
        lengths = [float(correlation_length(two_point_correlation(m.data))) for m in media]
        assert 1.6 < lengths[1] / lengths[0] < 2.4, (dims, lengths)  # doubling l about doubles the length


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(porosity=1.2), r"porosity must be in \(0, 1\), got 1.2"),
        (dict(dims=4), "dims must be 1, 2 or 3, got 4"),
        (dict(size=(8, 8), dims=3), "tuple of 3 positive ints"),
        (dict(correlation_length=0.0), "correlation_length must be positive"),
        (dict(size=2, dims=1, porosity=0.1), "cannot have porosity 0.1"),
    ],
)
def test_porous_media_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        porous_media(1, **kwargs)


# ------------------------------------------------------------------------------------------------- images


def _write(path: Path, array: np.ndarray, **save_kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)


def test_image_folder_round_trips_rgb_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for cls in ("dog", "cat"):
        for i in range(3):
            written[(cls, i)] = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            _write(tmp_path / cls / f"{i}.png", written[(cls, i)])
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = image_folder(tmp_path)
    assert ds.data.shape == (6, 3, 6, 5) and ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]  # sorted paths: cat/0..2, dog/0..2
    expected = np.stack([written[(c, i)] for c in ("cat", "dog") for i in range(3)]).transpose(0, 3, 1, 2)
    torch.testing.assert_close(ds.denormalize(ds.data), torch.tensor(expected / 255.0, dtype=torch.float32))
    assert float(ds.data.min()) >= -1 and float(ds.data.max()) <= 1
    assert image_folder(tmp_path, labels=False).labels is None


def test_image_folder_greyscale_formats_and_flat_folder(tmp_path):
    rng = np.random.default_rng(1)
    grey = [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in range(3)]
    _write(tmp_path / "a.png", grey[0])
    _write(tmp_path / "b.BMP", grey[1])
    _write(tmp_path / "c.webp", grey[2], lossless=True)
    ds = image_folder(tmp_path, channels=1)
    assert ds.labels is None and ds.data.shape == (3, 1, 4, 4)
    torch.testing.assert_close(
        ds.denormalize(ds.data)[:, 0], torch.tensor(np.stack(grey) / 255.0, dtype=torch.float32)
    )


def test_image_folder_reads_16_bit_greyscale_without_clipping(tmp_path):
    deep = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)  # up to 57000, far above 8-bit range
    _write(tmp_path / "deep.png", deep)
    ds = image_folder(tmp_path, channels=1)
    torch.testing.assert_close(
        ds.denormalize(ds.data)[0, 0], torch.tensor(deep / 65535.0, dtype=torch.float32)
    )
    assert torch.equal(image_folder(tmp_path, channels=3).data, ds.data.expand(1, 3, 4, 5))


def test_image_folder_size_center_crops_then_resizes(tmp_path):
    image = np.full((12, 20, 3), 200, dtype=np.uint8)
    image[:, :4], image[:, -4:] = 0, 255  # side bands outside the central 12x12 square
    _write(tmp_path / "wide.png", image)
    ds = image_folder(tmp_path, size=6)
    assert ds.data.shape == (1, 3, 6, 6)
    torch.testing.assert_close(ds.denormalize(ds.data), torch.full((1, 3, 6, 6), 200 / 255))


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found.*" + r"\.png.*\.webp"):
        image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        image_folder(tmp_path / "bad")
    _write(tmp_path / "sizes" / "a.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "sizes" / "b.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="different sizes.*size="):
        image_folder(tmp_path / "sizes")
    _write(tmp_path / "mixed" / "loose.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "mixed" / "cls" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="loose.png.*labels=False"):
        image_folder(tmp_path / "mixed")
    with pytest.raises(ValueError, match="channels must be 1.*or 3.*got 2"):
        image_folder(tmp_path / "sizes", channels=2)
    assert ".jpg" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------------- arrays


def test_npy_round_trip_minmax(tmp_path):
    x = np.random.default_rng(0).normal(3.0, 2.0, (5, 2, 6, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = array_file(tmp_path / "x.npy")
    assert ds.data.shape == (5, 2, 6, 7) and ds.labels is None
    assert float(ds.data.min()) == pytest.approx(-1) and float(ds.data.max()) == pytest.approx(1)
    torch.testing.assert_close(ds.denormalize(ds.data), torch.from_numpy(x), rtol=1e-5, atol=1e-5)
    vol = np.random.default_rng(1).random((2, 1, 3, 4, 5))
    np.save(tmp_path / "vol.npy", vol)
    assert array_file(tmp_path / "vol.npy").spatial_shape == (3, 4, 5)
    np.save(tmp_path / "signals.npy", vol[:, 0, 0])  # (N, L) without a channel axis
    assert array_file(tmp_path / "signals.npy", channel_axis=False).data.shape == (2, 1, 4, 5)


def test_npz_round_trip_with_labels_keys_and_scales(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 2, 1, 2]))
    ds = array_file(tmp_path / "d.npz", channel_axis=False, scale=(0, 255))  # the only non-label array
    assert ds.labels.tolist() == [0, 2, 1, 2] and ds.num_classes == 3
    torch.testing.assert_close(ds.data[:, 0], torch.tensor(images / 127.5 - 1, dtype=torch.float32))
    np.savez(tmp_path / "e.npz", x=images[:, None], other=images, y=np.arange(4))
    ds = array_file(tmp_path / "e.npz", scale=None)
    assert ds.labels.tolist() == [0, 1, 2, 3] and torch.equal(
        ds.data[:, 0], torch.tensor(images, dtype=torch.float32)
    )
    assert array_file(tmp_path / "e.npz", key="other", channel_axis=False).data.shape == (4, 1, 8, 8)


def test_pickled_arrays_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy.*pickle"):
        array_file(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", x=np.array([[1, 2], "s"], dtype=object))
    with pytest.raises(ValueError, match="obj.npz.*pickle"):
        array_file(tmp_path / "obj.npz")
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(np.zeros((2, 1, 4))))
    with pytest.raises(ValueError, match="raw.npy.*pickle"):
        array_file(tmp_path / "raw.npy")


def test_array_file_errors_name_expected_and_got(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"expected an array of shape \(N, C, L\).*got shape \(5,\)"):
        array_file(tmp_path / "flat.npy")
    np.save(tmp_path / "six.npy", np.zeros((1, 1, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\).*got shape \(1, 1, 2, 2, 2, 2\)"):
        array_file(tmp_path / "six.npy")
    np.savez(tmp_path / "k.npz", a=np.zeros((2, 1, 4)), b=np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match=r"no array named 'c'; available keys: \['a', 'b'\]"):
        array_file(tmp_path / "k.npz", key="c")
    with pytest.raises(ValueError, match=r"pass key=.*\['a', 'b'\]"):
        array_file(tmp_path / "k.npz")
    with pytest.raises(ValueError, match="single .npy array"):
        array_file(tmp_path / "six.npy", key="x")
    np.savez(tmp_path / "fl.npz", x=np.zeros((2, 1, 4)), labels=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels 'labels' must be a 1-D integer array"):
        array_file(tmp_path / "fl.npz")
    np.save(tmp_path / "nan.npy", np.array([[[0.0, np.nan]]]))
    with pytest.raises(ValueError, match="1 NaN/inf"):
        array_file(tmp_path / "nan.npy")
    np.save(tmp_path / "big.npy", np.full((1, 1, 3), 300.0))
    with pytest.raises(ValueError, match=r"outside the declared range \(0, 255\)"):
        array_file(tmp_path / "big.npy", scale=(0, 255))
    with pytest.raises(ValueError, match="scale must be 'auto'"):
        array_file(tmp_path / "big.npy", scale="minmax")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        array_file(tmp_path / "nope.npy")
    (tmp_path / "t.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"\.npy or \.npz.*t.csv"):
        array_file(tmp_path / "t.csv")


# ------------------------------------------------------------------------------------------------- crops


def _find_window(source: torch.Tensor, crop: torch.Tensor) -> list[tuple[int, ...]]:
    """Start corners where ``crop`` (C, *c) equals a window of ``source`` (C, *s) (exhaustive search)."""
    ranges = [range(s - c + 1) for s, c in zip(source.shape[1:], crop.shape[1:], strict=True)]
    hits = []
    for start in np.ndindex(*(len(r) for r in ranges)):
        window = tuple(slice(a, a + c) for a, c in zip(start, crop.shape[1:], strict=True))
        if torch.equal(source[(slice(None), *window)], crop):
            hits.append(tuple(int(a) for a in start))
    return hits


@pytest.mark.parametrize("spatial, crop", [((12,), 5), ((7, 9), (4, 6)), ((5, 6, 4), 3)])
def test_random_crops_are_sub_windows_of_their_source(spatial, crop):
    source = GridDataset(torch.randn(4, 2, *spatial, generator=gen()), torch.tensor([0, 1, 2, 3]))
    crops = RandomCrops(source, crop, seed=1, crops_per_sample=3)
    assert len(crops) == 12 and crops.channels == 2 and crops.num_classes == 4
    for i in range(len(crops)):
        item = crops[i]
        assert item["x"].shape == (2, *crops.spatial_shape) and int(item["class_labels"]) == i // 3
        assert _find_window(source[i // 3]["x"], item["x"]) == [crops.window(i)]


def test_random_crops_deterministic_per_epoch_and_cover_all_positions():
    source = GridDataset(torch.randn(50, 1, 10, 10, generator=gen()))
    crops = RandomCrops(source, 7, seed=3)
    epoch0 = [crops.window(i) for i in range(50)]
    assert epoch0 == [RandomCrops(source, 7, seed=3).window(i) for i in range(50)]
    crops.set_epoch(1)
    epoch1 = [crops.window(i) for i in range(50)]
    assert sum(a != b for a, b in zip(epoch0, epoch1, strict=True)) > 30
    assert epoch0 == [crops.window(i, epoch=0) for i in range(50)]
    assert {a for w in epoch0 + epoch1 for a in w} == {0, 1, 2, 3}  # every start offset is reachable
    by_gen = [RandomCrops(source, 7, generator=gen(9)).window(i) for i in range(5)]
    assert by_gen == [RandomCrops(source, 7, generator=gen(9)).window(i) for i in range(5)]
    batch = next(iter(DataLoader(crops, batch_size=8)))
    assert batch["x"].shape == (8, 1, 7, 7)
    torch.testing.assert_close(crops.denormalize(crops.normalize(batch["x"])), batch["x"])


def test_random_crops_reject_bad_sizes():
    source = GridDataset(torch.randn(2, 1, 8, 6))
    with pytest.raises(ValueError, match=r"between 1 and the data's spatial shape \(8, 6\)"):
        RandomCrops(source, 7)
    with pytest.raises(ValueError, match="has 3 axes but the data has 2"):
        RandomCrops(source, (4, 4, 4))
    with pytest.raises(ValueError, match="not both"):
        RandomCrops(source, 4, seed=1, generator=gen())
