"""The import directions of docs/DESIGN.md: a module imports from its own package and from lower layers only.

Every ``import`` in ``src/locvit`` is read, at module level and inside functions alike (a function-level import is
still a dependency). The layer table below is the one drawn in docs/DESIGN.md and CONTRIBUTING.md; the test fails
when the code climbs a layer or when the pictures and this table disagree.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "locvit"

# bottom to top; a package of layer i may import packages of layers < i (and its own package)
LAYERS = [
    ("files", "runtime", "labels"),
    ("layers", "weights", "data"),
    ("models",),
    ("official", "deploy", "viz"),
    ("engine", "export"),
    ("bench", "dense"),
    ("predict", "zoo", "hub", "demo"),
    ("cli",),
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(module: str) -> str:
    """``locvit.dense.detect`` -> ``dense``; ``locvit.__main__`` -> ``cli``; ``locvit`` (the API facade) -> ``''``."""
    parts = module.split(".")
    return "" if len(parts) == 1 else "cli" if parts[1] == "__main__" else parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every locvit module ``path`` imports (``from locvit import x`` -> ``locvit.x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("locvit"):
            if node.module == "locvit":
                out += [(node.lineno, f"locvit.{a.name}") for a in node.names if a.name != "__version__"]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "locvit"]
    return out


def _modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        out.append((path, module))
    return out


def test_every_package_has_a_layer():
    packages = {_package(m) for _, m in _modules()} - {""}
    assert packages == set(RANK), f"add to LAYERS (and docs/DESIGN.md): {sorted(packages - set(RANK))}; " \
                                  f"gone: {sorted(set(RANK) - packages)}"


def test_no_import_climbs_a_layer():
    climbs = []
    for path, module in _modules():
        src = _package(module)
        if not src:  # locvit/__init__.py: the public API binds names from every layer, lazily
            continue
        for line, target in _imports(path):
            dst = _package(target)
            if dst == src or (dst == "" and src == "cli"):  # the command line uses the public API as users do
                continue
            if dst not in RANK or RANK[dst] >= RANK[src]:
                climbs.append(f"{path.relative_to(ROOT)}:{line}: {src} (layer {RANK[src]}) imports {target} "
                              f"(layer {RANK.get(dst, 'top')})")
    assert not climbs, "imports against docs/DESIGN.md's layers:\n" + "\n".join(climbs)


def test_weights_know_no_model():
    """The weights package reads, checks and loads state dicts; a family's filter is passed in by the caller."""
    for path, module in _modules():
        if _package(module) == "weights":
            assert not [t for _, t in _imports(path) if _package(t) == "models"], path


def _picture(path: Path) -> list[tuple[str, ...]]:
    """The layer lines of a document's picture (``layer N  a, b, c   what they are``), bottom to top."""
    rows = re.findall(r"^layer (\d+) {2}([\w, ]+?) {2,}", path.read_text(), flags=re.M)
    layers = {int(n): tuple(p.strip() for p in names.split(",")) for n, names in rows}
    return [layers[i] for i in sorted(layers)]


def test_the_pictures_match():
    for doc in ("docs/DESIGN.md", "CONTRIBUTING.md"):
        assert _picture(ROOT / doc) == LAYERS, f"{doc}'s layer picture differs from tests/test_layers.py"


def test_moved_paths_import_as_their_new_home():
    """Each 0.1 module path (``locvit.MOVED``) imports, with a DeprecationWarning, as the very module that replaced
    it, so code written against the old layout keeps working for one release."""
    import importlib
    import sys
    import warnings

    import locvit

    for old, new in locvit.MOVED.items():
        sys.modules.pop(old, None)  # imported by an earlier test: the finder answers a first import only
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert [w for w in caught if issubclass(w.category, DeprecationWarning) and new in str(w.message)], old
    from locvit.tasks.detect import train_run  # a name through an old package path

    assert train_run is importlib.import_module("locvit.dense.detect").train_run
