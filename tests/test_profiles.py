"""Memory profiles and `polyscale memory`: the plan fits its budget by the estimate, grows with the budget,
tiles when one sample does not fit, and bad profile names are one clear error."""

from __future__ import annotations

import pytest
import torch
from tests.tiny import run_cli

from polyscale.cli.main import main
from polyscale.nn import attention
from polyscale.nn.unet import UNetConfig
from polyscale.pipelines.profiles import (
    GIB,
    PROFILES,
    SAFETY,
    attention_chunk,
    parse_gpu_memory,
    plan_sampling,
)
from polyscale.pipelines.sample import sampling_memory

NET = UNetConfig(dims=2, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention_levels=(1, 2), attention_kernel_sizes=(3, 3))  # fmt: skip
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("value", "name", "budget"),
    [("16GB", "16GB", 16 * GIB), ("8GB", "6-12GB", 6 * GIB), ("12gb", "6-12GB", 6 * GIB),
     ("20 GiB", "16GB", 20 * GIB), (40 * GIB, "32GB", 40 * GIB), ("80GB", "80GB", 80 * GIB)],
)  # fmt: skip
def test_profile_names_and_sizes(value, name, budget):
    profile = parse_gpu_memory(value, CPU)
    assert (profile.name, profile.budget) == (name, budget)


@pytest.mark.parametrize("value", ["lots", "16TB", "-3GB", 0, 1.5])
def test_a_bad_profile_is_one_clear_error(value):
    with pytest.raises(ValueError, match="gpu_memory must be") as err:
        parse_gpu_memory(value, CPU)
    assert "\n" not in str(err.value)


def test_auto_on_a_cpu_is_the_cpu_profile():
    assert parse_gpu_memory("auto", CPU).name == parse_gpu_memory(None, CPU).name == "cpu"


def test_the_plan_fits_its_budget_and_a_bigger_budget_never_gives_a_smaller_batch():
    batches = []
    for name in ("6-12GB", "16GB", "24GB", "32GB", "80GB"):
        plan = plan_sampling(NET, (1, 16, 16), resolution=512, num_samples=256, gpu_memory=name, device=CPU)
        assert plan.estimate <= SAFETY * PROFILES[name].budget
        batches.append(plan.batch_size)
        # one more sample per batch would not fit (or all samples are in one batch already)
        more = sampling_memory(NET, (256, 1, 512, 512), batch_size=plan.batch_size + 1, steps=32).device
        assert plan.batch_size == 256 or more > SAFETY * PROFILES[name].budget
    assert batches == sorted(batches) and batches[-1] > batches[0]


def test_guidance_halves_the_batch_that_fits():
    plain = plan_sampling(NET, (1, 16, 16), resolution=512, num_samples=256, gpu_memory="16GB", device=CPU)
    guided = plan_sampling(NET, (1, 16, 16), resolution=512, num_samples=256, gpu_memory="16GB", device=CPU,
                           guidance=True)  # fmt: skip
    assert guided.batch_size < plain.batch_size


def test_tiles_when_one_sample_does_not_fit():
    plan = plan_sampling(NET, (1, 16, 16), resolution=8192, num_samples=1, gpu_memory="6-12GB", device=CPU)
    assert plan.tile_size is not None and plan.tile_size % 4 == 0 and plan.tile_size < 8192
    assert plan.estimate <= SAFETY * 6 * GIB
    small = plan_sampling(NET, (1, 16, 16), resolution=64, num_samples=1, gpu_memory="6-12GB", device=CPU)
    assert small.tile_size is None and small.bridge_kernel == "dense"


def test_attention_chunk_is_restored():
    x = torch.randn(1, 16, 12, 12)
    layer = attention.NeighborhoodAttention(16, dims=2, kernel_size=5, num_heads=2)
    with torch.no_grad():
        whole = layer(x)
        with attention_chunk(64):
            assert attention.chunk_elements("cpu") == 64
            chunked = layer(x)
    assert attention.chunk_elements("cpu") == attention._CHUNK_ELEMENTS["cpu"]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)  # the chunk changes memory, not results
    with pytest.raises(ValueError, match="attention chunk elements must be an integer >= 1"):
        with attention_chunk(0):
            pass


def test_memory_command_prints_the_prediction_and_the_plan(capsys):
    code = main(["memory", "--checkpoint", "digits2d_text", "--resolution", "64", "--batch-size", "8",
                 "--profile", "16GB", "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "predicted peak while sampling" in out and "doubled for guidance" in out
    assert "profile 16GB (16.0 GiB)" in out and "batch" in out
    code, err = run_cli(["memory", "--checkpoint", "digits2d", "--resolution", "30"], capsys)
    assert code == 2 and "not divisible" in err
