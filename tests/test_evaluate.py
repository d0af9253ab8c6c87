"""`polyscale evaluate`: every shipped model gets its metric table with the real-vs-real floor beside it."""

from __future__ import annotations

import math

import pytest
import torch

from polyscale.cli.main import main
from polyscale.metrics.classifier import FeatureClassifier
from polyscale.pipelines.datasets import build_dataset
from polyscale.pipelines.evaluate import (
    evaluate_checkpoint,
    format_table,
    labelled_rows,
    real_data_config,
    reference_classifier,
    stack_dataset,
    texture_rows,
)
from polyscale.pipelines.experiment import DataConfig, load_experiment

LABELLED = {"sliced Wasserstein", "Fréchet distance", "classifier mean max-prob", "smallest class share"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("digits2d", LABELLED),
        ("mnist1d", LABELLED),
        (
            "porous3d",
            {
                "sliced Wasserstein",
                "porosity abs. error",
                "two-point correlation RMS",
                "two-point correlation shape",
            },
        ),
        ("texture2d", {"sliced Wasserstein", "grey-level histogram", "radial power spectrum"}),
    ],
)
@pytest.mark.long
def test_shipped_models_get_metrics_next_to_the_floor(name, expected):
    rows = evaluate_checkpoint(name, num_samples=8, steps=3, device="cpu", progress=False)
    assert len(rows) == len(expected)
    assert all(any(r.name.startswith(key) for r in rows) for key in expected)
    assert all(math.isfinite(r.model) and math.isfinite(r.floor) for r in rows)
    sw = rows[0]
    assert sw.floor > 0 and sw.model > 0
    assert "real floor" in format_table(rows)


def test_a_bad_model_scores_worse_than_the_floor():
    # 3 denoising steps from sigma 80 leave the samples far from the data: the floor must beat them
    rows = evaluate_checkpoint("digits2d", num_samples=32, steps=1, device="cpu", progress=False)
    assert rows[0].model > 2 * rows[0].floor
    frechet = next(r for r in rows if r.name.startswith("Fréchet"))
    assert frechet.model > 5 * frechet.floor


def test_cli_evaluate_prints_the_table(capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                "digits2d",
                "--num-samples",
                "8",
                "--timesteps",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "sliced Wasserstein" in out and "real floor" in out
    assert main(["evaluate", "--checkpoint", "digits2d", "--num-samples", "1"]) == 2
    assert "num_samples must be >= 2" in capsys.readouterr().err


# The reference classifier, trained as evaluate_checkpoint trains it for num_samples=8 (the training split
# without its first 8 items, the floor's): the cache then serves the evaluate tests above too.
FLOOR = 8


@pytest.fixture(scope="module", params=["digits2d", "mnist1d"])
def labelled(request):
    """``(classifier, train_x, test_x, test_y, minimum held-out accuracy)`` for one labelled preset."""
    data = load_experiment(request.param).data
    train_x, train_y = stack_dataset(build_dataset(data, split="train"))
    test_x, test_y = stack_dataset(build_dataset(data, split="test"))
    clf = reference_classifier(train_x[FLOOR:], train_y[FLOOR:])
    min_accuracy = {"digits2d": 0.97, "mnist1d": 0.88}[request.param]
    return clf, train_x, test_x, test_y, min_accuracy


def test_reference_classifier_is_accurate_on_held_out_data(labelled):
    # measured: digits 0.98, MNIST-1D 0.92 (a pixel logistic regression gets 0.97 and 0.28)
    clf, _, test_x, test_y, min_accuracy = labelled
    report = clf.report(test_x, test_y)
    assert report.accuracy > min_accuracy
    assert report.mean_max_prob > 0.8 and report.min_class_fraction > 0.05
    assert clf.features(test_x[:5]).shape == (5, 32)
    torch.testing.assert_close(clf.predict_proba(test_x[:5]).sum(dim=1), torch.ones(5))


def test_real_data_scores_near_the_floor_and_noise_far_from_it(labelled):
    clf, train_x, test_x, _, _ = labelled
    g = torch.Generator().manual_seed(0)
    n = 128
    # two disjoint real sets of the same size, both (but for 8 items) seen by the classifier: a fair pair
    floor_x, other_real = train_x[:n], train_x[n : 2 * n]
    real_rows = labelled_rows(other_real, floor_x, test_x, clf)
    noise_rows = labelled_rows(torch.randn(n, *train_x.shape[1:], generator=g), floor_x, test_x, clf)
    frechet_real, frechet_noise = real_rows[0], noise_rows[0]
    assert frechet_real.name.startswith("Fréchet") and frechet_real.floor > 0
    assert frechet_real.model < 2 * frechet_real.floor
    assert frechet_noise.model > 10 * frechet_noise.floor
    assert real_rows[1].model > 0.8  # real data is classified confidently


def test_classifier_training_is_reproducible_and_validates_its_input():
    data = load_experiment("digits2d").data
    x, y = stack_dataset(build_dataset(data, split="train"), limit=200)
    fits = [
        FeatureClassifier.fit(x, y, epochs=1, generator=torch.Generator().manual_seed(3)) for _ in range(2)
    ]
    torch.testing.assert_close(fits[0].features(x[:10]), fits[1].features(x[:10]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="labels \\(N,\\)"):
        FeatureClassifier.fit(x, y[:-1])
    with pytest.raises(ValueError, match="expected \\(N, 1, \\*spatial\\) with 2 spatial axes"):
        fits[0].features(x[:, 0])


@pytest.mark.parametrize("spatial", [(12,), (8, 8), (4, 4, 4)])
def test_classifier_is_one_net_for_1d_2d_and_3d_grids(spatial):
    # two classes told apart by their mean: any working net of any dimension learns it in a few epochs
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.randn(64, 2, *spatial, generator=g) * 0.3 + (2.0 * y - 1).view(-1, *([1] * (len(spatial) + 1)))
    clf = FeatureClassifier.fit(x, y, epochs=5, batch_size=16, feature_dim=32, generator=g)
    assert clf.features(x).shape == (64, 32) and clf.report(x, y).accuracy == 1.0


def _smooth_field(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """A stand-in texture: white noise blurred by a 5x5 box, rescaled to std 0.3, ``(n, 1, size, size)``."""
    noise = torch.randn(n, 1, size + 4, size + 4, generator=generator)
    field = torch.nn.functional.avg_pool2d(noise, 5, stride=1)  # (n, 1, size, size), correlated over ~5 px
    return 0.3 * field / field.std()


def test_texture_rows_put_real_crops_near_the_floor_and_white_noise_far_from_it():
    g = torch.Generator().manual_seed(0)
    floor_x, test_x, other_real = (_smooth_field(64, 32, g) for _ in range(3))
    noise = 0.3 * torch.randn(64, 1, 32, 32, generator=g)  # same grey-level spread, flat spectrum
    real_rows, noise_rows = texture_rows(other_real, floor_x, test_x), texture_rows(noise, floor_x, test_x)
    assert [r.name.split()[0] for r in real_rows] == ["grey-level", "radial"]
    for real in real_rows:
        assert real.model < 2 * real.floor + 0.01
    spectrum_noise = noise_rows[1]
    assert spectrum_noise.model > 10 * spectrum_noise.floor
    overexposed = (floor_x * 5).clamp(-1, 1)  # right spectrum shape, wrong grey levels
    assert texture_rows(overexposed, floor_x, test_x)[0].model > 10 * real_rows[0].floor


def test_real_data_is_taken_at_the_sampled_size():
    fake = torch.zeros(2, 1, 64, 64)
    texture = DataConfig(kind="texture", crop_size=32)
    assert real_data_config(texture, fake).crop_size == 64  # held-out crops as large as the samples
    huge = torch.zeros(1, 1, 256, 256)
    assert real_data_config(texture, huge).crop_size == 128  # no taller than the held-out band
    porous = DataConfig(kind="porous", size=32, crop_size=16)
    assert (real_data_config(porous, fake).size, real_data_config(porous, fake).crop_size) == (64, None)
    digits = DataConfig(kind="digits", size=16, crop_size=8)
    assert real_data_config(digits, fake) == DataConfig(kind="digits", size=16, crop_size=None)


def test_texture_larger_than_the_held_out_band_is_scored_window_by_window():
    g = torch.Generator().manual_seed(0)
    test = torch.randn(6, 1, 32, 32, generator=g) * 0.3
    big = torch.randn(2, 1, 64, 64, generator=g) * 0.3  # the same white-noise texture, twice as large
    loud = torch.randn(2, 1, 64, 64, generator=g)  # a different texture
    good, bad = texture_rows(big, test, test), texture_rows(loud, test, test)
    assert good[1].model < 0.1 < bad[1].model  # spectrum error in decades, from 32x32 windows
