"""The README's Python example runs as written, and its set-up commands name real Makefile targets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.long
def test_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "sample_heun" in b)
    scope: dict = {}
    exec(compile(example, str(README), "exec"), scope)  # noqa: S102 - our own README, not user input
    assert scope["loss"].shape == (2,) and torch.isfinite(scope["loss"]).all()
    assert scope["sample"].shape == (1, 1, 24, 24, 24) and torch.isfinite(scope["sample"]).all()


def test_setup_commands_are_makefile_targets():
    makefile = (README.parent / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README.read_text()
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    text = README.read_text()
    setup = re.search(r"## Set-up on a fresh machine\n(.*?)\n## ", text, flags=re.S).group(1)
    block = re.search(r"```bash\n(.*?)```", setup, flags=re.S).group(1)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]
    for target in ("test-fast", "lint", "bench"):  # the other targets the README names
        assert f"make {target}" in text and re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "TORCH_INDEX" in text and "TORCH_INDEX" in makefile
    assert "docs/architecture.md" in text and "shared/DESIGN.md" not in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
