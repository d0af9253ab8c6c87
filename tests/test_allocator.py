"""keep_freed_memory: argument checks, the opt-in switch, and its effect (page faults of re-allocated activations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from polyscale.pipelines import allocator
from polyscale.pipelines.allocator import keep_freed_memory

GLIBC = allocator._mallopt() is not None

# In a fresh process: five forward passes of three 3x3x3 convolutions over a (1, 32, 64^3) activation (33.5 MB,
# above glibc's largest adaptive mmap threshold of 32 MiB, as in a 3D U-Net); minor page faults of the last three.
# With glibc's defaults every activation is a fresh mapping (tens of thousands of faults per pass); with the
# freed blocks kept in the heap, later passes reuse pages already faulted in.
FAULTS = """
import json, resource, sys, torch
from polyscale.pipelines.allocator import apply_from_environment
torch.set_num_threads(1)
applied = apply_from_environment()
conv = lambda i, o: torch.nn.Conv3d(i, o, 3, padding=1)
net = torch.nn.Sequential(conv(8, 32), torch.nn.SiLU(), conv(32, 32), torch.nn.SiLU(), conv(32, 8))
x = torch.randn(1, 8, 64, 64, 64)
with torch.no_grad():
    for i in range(5):
        if i == 2:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "applied": applied}))
"""


def faults(env_value: str) -> dict:
    """Run FAULTS with ``POLYSCALE_KEEP_FREED_MEMORY=env_value``."""
    env = {**os.environ, allocator.ENV_SWITCH: env_value}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("key", ["mmap_threshold", "trim_threshold", "top_pad"])
@pytest.mark.parametrize("value", [0, -5, 2**31, 1.5, True, "big"])
def test_bad_settings_name_the_setting(key, value):
    with pytest.raises(ValueError, match=rf"{key} must be an integer in \[1, 2\^31\), got"):
        keep_freed_memory(**{key: value})


@pytest.mark.parametrize("value", ["", "0", "off", "False"])
def test_switch_off_changes_nothing(monkeypatch, value):
    monkeypatch.setenv(allocator.ENV_SWITCH, value)
    assert allocator.apply_from_environment() is None


def test_switch_with_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(allocator.ENV_SWITCH, "maybe")
    with pytest.raises(ValueError, match="POLYSCALE_KEEP_FREED_MEMORY must be 1 or 0 .* got 'maybe'"):
        allocator.apply_from_environment()


def test_cli_reports_a_bad_switch_in_one_line(monkeypatch, capsys):
    from polyscale.cli.main import main

    monkeypatch.setenv(allocator.ENV_SWITCH, "maybe")
    assert main(["presets"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "POLYSCALE_KEEP_FREED_MEMORY" in err[0]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_returns_the_settings_and_is_idempotent():
    first = keep_freed_memory()
    assert first == allocator.DEFAULTS
    assert keep_freed_memory() == first


@pytest.mark.long
@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_tensor_memory_is_reused():
    default, tuned = faults("0"), faults("1")
    assert default["applied"] is None and tuned["applied"] == allocator.DEFAULTS
    assert default["faults"] > 10_000  # fresh mappings in every pass
    assert tuned["faults"] * 10 < default["faults"]
