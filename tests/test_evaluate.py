"""`polyscale evaluate`: every shipped model gets its metric table with the real-vs-real floor beside it."""

from __future__ import annotations

import math

import pytest

from polyscale.cli.main import main
from polyscale.pipelines.evaluate import evaluate_checkpoint, format_table


@pytest.mark.parametrize(
    "name, expected",
    [
        ("digits2d", {"sliced Wasserstein", "classifier mean max-prob", "smallest class share"}),
        ("mnist1d", {"sliced Wasserstein", "classifier mean max-prob", "smallest class share"}),
        ("porous3d", {"sliced Wasserstein", "porosity abs. error", "two-point correlation"}),
    ],
)
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
