"""The docs name only what exists: every code name, path, config key and link that README.md and
the pages under docs/ cite in backticks resolves against the code, the repository and the
composed Hydra configs.

The rules, applied to backtick spans outside fenced code blocks:

- **Dotted names** (``a.b`` or ``a.b(...)``, ``a.b -> ...``) whose first part is
  ``winft_lightning``, a room (``core``, ``stages``, ...) or a top-level module (``pipeline``,
  ``api``, ...) are code: relative to the package, the longest importable module prefix is
  imported and the rest is read with ``getattr``.
- **Config keys**: a dotted name, or the key of a ``key=value`` override, whose first part is a
  top-level key of a composed config (``model``, ``data``, ``analyze``, ``study``, ``hydra``, ...).
  Some first parts are both (``data``, ``analyze``, ``study``): such a name resolves when it is
  either a code name or a key of one of :data:`CONFIGS` (``data.masks.match_alpha`` is code,
  ``data.control`` a key); a name that is neither fails.
- **Bare names in docs/INTERFACES.md's tables**: in a row ``| room | modules | job |``, every
  module cell names a file (or package) of that room, and every name of the job cell that looks
  like code (a call ``f(...)``, or a name with ``_`` or a capital) is an attribute of one of
  the row's modules, a module of its room, or a config key. The name after ``->`` is not read.
- **Paths** starting with ``src/ conf/ docs/ scripts/ bench/ tests/ .ci/`` exist from the
  repository root (a ``*`` is a glob that must match).
- **Links** ``[text](target)`` to a file exist, and a ``#anchor`` is a heading of the target.

A dotted span whose last part is a file suffix is a file name, unless it is an override
(``teacher.ckpt=<file>``) or a config key. Anything else in backticks
(``results.json``, ``awd.a0100.i16z``, ``[B,N,4]``) is prose.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import winft_lightning

PACKAGE = Path(winft_lightning.__file__).parent
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
INTERFACES = "docs/INTERFACES.md"
ROOMS = sorted(
    p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name != "conf"
)
TOP_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
CODE_ROOTS = {"winft_lightning", *ROOMS, *TOP_MODULES}
PATH_ROOTS = ("src/", "conf/", "docs/", "scripts/", "bench/", "tests/", ".ci/")
# (primary config, overrides): the configs whose keys the docs may cite
CONFIGS = [
    ("train", []),
    ("train", ["experiment=fmnist_awd_dip_vit"]),
    ("train", ["experiment=winft_b16_384", "trainer=ddp", "hydra/launcher=submitit_slurm"]),
    ("prepare", ["data=imagefolder"]),
    ("analyze", []),
    ("visualize", []),
    ("explore", []),
    ("study", []),
]
DOTTED = re.compile(r"(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(.*|\s*->.*|=.*)?")
BARE = re.compile(r"(?P<name>[A-Za-z_]\w*)(?P<call>\()?.*")
# a last part that makes a dotted span a file name (``results.json``), not a name
FILE_SUFFIXES = {"py", "json", "jsonl", "md", "yaml", "txt", "csv", "npz", "npy", "ckpt", "pth",
                 "pt", "bin", "safetensors", "png", "jpg", "lock", "sbatch", "sh", "toml", "i16z"}  # fmt: skip
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def prose_lines(doc: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of ``doc`` outside fenced code blocks."""
    fenced = False
    for number, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def spans(line: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", line)


def cited(doc: str) -> list[tuple[str, str]]:
    """(where, span) of every backtick span of ``doc``'s prose; a span may wrap a line."""
    lines = dict(prose_lines(doc))
    text = "\n".join(lines.get(n, "") for n in range(1, max(lines, default=0) + 1))
    return [
        (f"{doc}:{text.count(chr(10), 0, m.start()) + 1}", " ".join(m[1].split()))
        for m in re.finditer(r"`([^`]+)`", text)
    ]


# ----------------------------------------------------------------------------- resolving


def code_object(dotted: str) -> Any:
    """The object a dotted name (relative to the package unless it starts with it) names."""
    parts = dotted.split(".")
    if parts[0] != "winft_lightning":
        parts = ["winft_lightning", *parts]
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the name is gone
        return obj
    raise ModuleNotFoundError(dotted)


def resolves_as_code(dotted: str) -> bool:
    try:
        code_object(dotted)
    except (ImportError, AttributeError):
        return False
    return True


def _keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from _keys(value, f"{prefix}{key}.")


@cache
def config_keys() -> frozenset[str]:
    """Every key path of :data:`CONFIGS`, composed as the CLIs compose them (unresolved)."""
    keys: set[str] = set()
    for name, overrides in CONFIGS:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(PACKAGE / "conf"), version_base="1.3"):
                cfg = compose(name, overrides=overrides, return_hydra_config=True)
        finally:
            GlobalHydra.instance().clear()
        keys |= set(_keys(OmegaConf.to_container(cfg, resolve=False)))
    return frozenset(keys)


def config_roots() -> set[str]:
    return {k for k in config_keys() if "." not in k}


def dotted_citations() -> list[tuple[str, str]]:
    """(where, name) of every dotted code name or config key the docs cite."""
    roots = CODE_ROOTS | config_roots()
    out = []
    for doc in DOCS:
        for where, span in cited(doc):
            m = DOTTED.fullmatch(span.lstrip("+"))
            parts = m["name"].split(".") if m else []
            file_name = parts[-1:] and parts[-1] in FILE_SUFFIXES and "=" not in span
            if parts and parts[0] in roots and not (file_name and m["name"] not in config_keys()):
                out.append((where, m["name"]))
    return out


def resolves(name: str) -> bool:
    root = name.split(".")[0]
    return (root in CODE_ROOTS and resolves_as_code(name)) or name in config_keys()


# ----------------------------------------------------------------------------- INTERFACES.md


def table_rows() -> list[tuple[str, str, list[str], list[str]]]:
    """(where, room, module names, job-cell spans) of INTERFACES.md's room tables."""
    rows = []
    for number, line in prose_lines(INTERFACES):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not (cells[0] == "top" or re.fullmatch(r"`\w+/`", cells[0])):
            continue
        room = "" if cells[0] == "top" else cells[0].strip("`/")
        modules = [s.removesuffix(".py") for s in spans(cells[1])]
        rows.append((f"{INTERFACES}:{number}", room, modules, spans(cells[2])))
    return rows


def looks_like_code(span: str) -> str | None:
    """The name a bare span cites as code: a call, or a name with ``_`` or a capital."""
    m = BARE.fullmatch(span)
    if not m or "." in span.split("(")[0]:
        return None
    name = m["name"]
    return name if m["call"] or "_" in name.strip("_") or name != name.lower() else None


def row_has(room: str, modules: list[str], name: str) -> bool:
    prefix = f"{room}." if room else ""
    candidates = [f"{prefix}{m}.{name}" for m in modules] + [f"{prefix}{name}"]
    return any(resolves_as_code(c) for c in candidates) or name in config_keys()


# ----------------------------------------------------------------------------- tests


def test_the_docs_cite_enough_to_mean_something():
    names = [n for _, n in dotted_citations()]
    assert len(names) >= 40, names
    assert len(table_rows()) >= 30
    assert {"stages.analyze.analyze_shards", "data.masks.match_alpha", "model.alpha"} <= set(names)


@pytest.mark.parametrize("where,name", dotted_citations(), ids=lambda x: x)
def test_a_cited_dotted_name_resolves(where, name):
    assert resolves(name), f"{where}: `{name}` is neither code nor a config key"


@pytest.mark.parametrize("where,room,modules,job", table_rows(), ids=lambda x: str(x)[:40])
def test_an_interfaces_row_names_its_modules_and_what_they_hold(where, room, modules, job):
    base = PACKAGE / room
    missing = [m for m in modules if not ((base / f"{m}.py").exists() or (base / m).is_dir())]
    assert not missing, f"{where}: no module {missing} in {base}"
    unresolved = [n for s in job if (n := looks_like_code(s)) and not row_has(room, modules, n)]
    assert not unresolved, f"{where}: {unresolved} not in {room or 'top'}/{modules}"


def cited_paths() -> list[tuple[str, str]]:
    return [
        (where, span.split()[0])
        for doc in DOCS
        for where, span in cited(doc)
        if span.startswith(PATH_ROOTS)
    ]


@pytest.mark.parametrize("where,path", cited_paths(), ids=lambda x: x)
def test_a_cited_path_exists(where, path):
    found = list(ROOT.glob(path)) if "*" in path else [ROOT / path] * (ROOT / path).exists()
    assert found, f"{where}: `{path}` does not exist"


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file."""
    out = set()
    for line in doc.read_text().splitlines():
        if m := re.match(r"#+\s+(.*)", line):
            out.add(re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-"))
    return out


def links() -> list[tuple[str, str]]:
    return [
        (f"{doc}:{n}", m["target"])
        for doc in DOCS
        for n, line in prose_lines(doc)
        for m in LINK.finditer(line)
        if not m["target"].startswith(("http://", "https://", "mailto:"))
    ]


@pytest.mark.parametrize("where,target", links(), ids=lambda x: x)
def test_a_link_reaches_its_file_and_heading(where, target):
    doc = ROOT / where.split(":")[0]
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path).resolve() if path else doc
    assert dest.exists(), f"{where}: link to {target}: no {dest}"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{where}: no heading #{anchor} in {dest.name}"
