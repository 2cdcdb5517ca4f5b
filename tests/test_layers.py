"""The package's layer order holds: no module imports one of a higher layer.

Every ``import feddx...`` in ``src/feddx`` counts, including the ones inside functions (the
heavy imports are deferred there, and a deferred upward import is still an upward import).
The order is the one the README's Design section states.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "feddx"

# Lowest first. A module may import its own layer and every layer below it.
LAYERS: list[set[str]] = [
    {"errors", "io", "paths", "progress", "settings", "__init__", "__version__"},
    {"data"},
    {"model"},
    {"train"},
    {"evaluate"},
    {"federated"},
    {"personalize"},
    {"serve"},
    {"demo"},  # below the CLI: the CLI passes in what the demo needs of it (its progress bars)
    {"cli"},
]


def _layer(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"feddx.{top} is in no layer: add it to LAYERS and the README")


def _feddx_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "feddx":
                names = [f"feddx.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.startswith("feddx.")]
    return found


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def test_no_module_imports_a_higher_layer() -> None:
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        own = _layer(_top(path))
        for line, name in _feddx_imports(path):
            target = name.split(".")[1]
            if _layer(target) > own:
                violations.append(f"{path.relative_to(SRC.parent)}:{line} imports {name}")
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_only_the_flower_entry_points_import_the_server_app() -> None:
    # The ServerApp module imports Flower; a reader of its output folder (the registry, the
    # demo) takes the folder names from feddx.paths instead of importing it for one string.
    allowed = {"federated/server_app.py", "federated/experiments.py"}
    offenders = [
        f"{path.relative_to(SRC)}:{line}"
        for path in sorted(SRC.rglob("*.py"))
        if str(path.relative_to(SRC)) not in allowed
        for line, name in _feddx_imports(path)
        if name == "feddx.federated.server_app"
    ]
    assert not offenders, f"imports of feddx.federated.server_app: {offenders}"


def test_every_top_level_module_has_a_layer() -> None:
    for path in SRC.iterdir():
        if path.name.startswith((".", "_")) and path.name != "__init__.py":
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            _layer(path.name.removesuffix(".py"))


def test_no_test_skips_when_a_feddx_module_fails_to_import() -> None:
    # pytest.importorskip("feddx....") would turn a broken feddx module into a green skip.
    tests = Path(__file__).resolve().parent
    offenders = [
        str(p.relative_to(tests))
        for p in tests.rglob("*.py")
        if p.name != Path(__file__).name and 'importorskip("feddx' in p.read_text()
    ]
    assert not offenders, f"importorskip on feddx modules in: {offenders}"
