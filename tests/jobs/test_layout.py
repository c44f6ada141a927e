"""The package's layout holds: folders in pipeline order import only the folders below them,
there is no import cycle, and ``core/`` is pure (no Lightning, no Hydra, no file access)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import winft_lightning

PACKAGE = Path(winft_lightning.__file__).parent
# bottom to top; the package's top-level modules (pipeline, __main__, entry points) stand above all
ROOMS = ("core", "runtime", "models", "data", "figures", "explorer", "lit", "stages")
TOP = len(ROOMS)
FILE_ACCESS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink",
               "rename", "save", "load", "savez", "glob", "rglob", "iterdir"}  # fmt: skip
# (os.replace and friends are refused with their import: str.replace is no file access)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> int:
    parts = module.split(".")
    return ROOMS.index(parts[1]) if len(parts) > 1 and parts[1] in ROOMS else TOP


def imports(path: Path) -> set[str]:
    """Every winft_lightning module that ``path`` imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = module_name(path).split(".")
            base = base[: len(base) - node.level + (path.name == "__init__.py")]
            found.add(".".join([*base, *([node.module] if node.module else [])]))
    return {m for m in found if m.split(".")[0] == "winft_lightning"}


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in imports(p) if m in SOURCES and m != name} for name, p in SOURCES.items()}


@pytest.mark.parametrize("name", [n for n in SOURCES if n != "winft_lightning"])
def test_no_module_imports_a_room_above_its_own(name):
    upward = {m for m in GRAPH[name] if room(m) > room(name) and m != "winft_lightning"}
    assert not upward, f"{name} ({room(name)}) imports {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                pytest.fail(" -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_is_pure(path):
    tree = ast.parse(path.read_text())
    outside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            outside |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            outside.add(node.module.split(".")[0])
    assert not outside & {"lightning", "pytorch_lightning", "hydra", "omegaconf", "os", "shutil",
                          "pathlib", "io", "tempfile", "pickle", "json"}, outside  # fmt: skip
    calls = {
        (n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", ""))
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
    }
    assert not calls & FILE_ACCESS, calls & FILE_ACCESS


def test_the_layout_test_sees_the_rooms_and_their_arrows():
    """The checks above read real imports: the graph has the arrows the pipeline needs."""
    assert {"winft_lightning.pipeline", "winft_lightning.core.interactions"} <= set(SOURCES)
    assert "winft_lightning.stages.train" in GRAPH["winft_lightning.__main__"]
    assert "winft_lightning.core.interactions" in GRAPH["winft_lightning.models.inputs"]
    assert all(room(m) == 0 for m in GRAPH["winft_lightning.core.analysis"])
