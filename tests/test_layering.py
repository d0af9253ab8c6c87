"""Imports only point down: every import in ``src/polyscale`` obeys the allowed-imports table of
``docs/architecture.md`` (read from that page, so the documentation and the check cannot drift apart)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "polyscale"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
FOUNDATION = ("polyscale", "atomic", "registry", "pickles", "devices", "config")


def allowed_imports() -> dict[str, set[str]]:
    """Layer -> the other layers it may import, parsed from the table between the markers of the page."""
    text = ARCHITECTURE.read_text()
    start = text.index("<!-- allowed-imports table")
    end = text.index("<!-- end of allowed-imports table")
    table: dict[str, set[str]] = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        layer = cells[0].strip("`")
        names: set[str] = set()
        for item in filter(None, (c.strip() for c in cells[1].split(","))):
            names |= set(FOUNDATION) if item == "foundation" else {item.strip("`")}
        table[layer] = names - {layer}
    return table


def layer_of(module: str) -> str | None:
    """The top-level part of ``polyscale.a.b`` (``a``), ``polyscale`` for the package itself, ``None`` for
    anything outside polyscale."""
    parts = module.split(".")
    if parts[0] != "polyscale":
        return None
    if len(parts) == 1:
        return "polyscale"
    head = parts[1]
    if (PACKAGE / head).is_dir() or (PACKAGE / f"{head}.py").is_file():
        return head
    return "polyscale"  # a name defined in polyscale/__init__.py (``from polyscale import __version__``)


def imports_in(source: str, package: list[str]) -> list[tuple[int, str]]:
    """Every absolute module an import in ``source`` names (with its line), relative imports resolved against
    ``package`` (the importing file's package, e.g. ``["polyscale", "nn"]``), imports inside functions and under
    ``if TYPE_CHECKING:`` included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module in ("polyscale", ".".join(package)) and node.level <= 1:
                # ``from polyscale import io`` / ``from . import x`` may name submodules
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), ["polyscale", *path.relative_to(PACKAGE).parent.parts])


def layer_of_file(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem.replace("__init__", "polyscale")


def violations() -> list[str]:
    table = allowed_imports()
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of_file(path)
        rel = path.relative_to(ROOT)
        if layer not in table:
            broken.append(f"{rel}: layer {layer!r} has no row in docs/architecture.md")
            continue
        for line, module in imports_of(path):
            target = layer_of(module)
            if target is None or target == layer or target in table[layer]:
                continue
            broken.append(f"{rel}:{line}: {layer} imports {module} ({target} is not below {layer})")
    return broken


def test_table_names_real_layers():
    table = allowed_imports()
    assert {"atomic", "config", "io", "nn", "diffusion", "training", "pipelines", "cli"} <= set(table)
    for layer, allowed in table.items():
        assert allowed <= set(table), f"{layer} may import unknown layers {allowed - set(table)}"
    assert not table["atomic"], "atomic.py is the lowest floor: it imports nothing from polyscale"


def test_imports_point_down():
    broken = violations()
    assert not broken, "imports that break the table in docs/architecture.md:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        (["polyscale", "nn"], "from ..io import PretrainedMixin", "io"),
        (["polyscale", "diffusion", "samplers"], "from ...ot import KERNELS", "ot"),
        (["polyscale", "cli"], "from polyscale import __version__", "polyscale"),
        (["polyscale", "viz"], "def f():\n    from polyscale.io import atomic_write_bytes", "io"),
        (["polyscale", "data"], "if TYPE_CHECKING:\n    from polyscale.pipelines.x import C", "pipelines"),
    ],
)
def test_imports_resolve_to_layers(package, source, expected):
    # what the check stands on: relative, nested and type-only imports all map to the layer they name
    [(_, module)] = imports_in(source, package)
    assert layer_of(module) == expected
