"""The explorer's one HTML file: the template ``explorer.html`` with ``explorer.js`` and the
packed data (:mod:`.pack`) inlined. No network: no external script, style, font or image;
the page decodes its data in the browser (base64, ``DecompressionStream``, ``createImageBitmap``)
and opens from disk."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["explorer_html", "iframe_html", "write_explorer"]

_DATA = "<!--EXPLORER_DATA-->"
_SCRIPT = "/*EXPLORER_SCRIPT*/"
_TITLE = "<!--EXPLORER_TITLE-->"


def _template(name: str) -> str:
    return resources.files("winft_lightning.explorer").joinpath(name).read_text(encoding="utf-8")


def _json_safe(text: str) -> str:
    """JSON text that cannot end or comment out the ``<script>`` element it is inlined into:
    ``<``, ``>`` and ``&`` as ``\\u`` escapes (the same JSON value)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _script_safe(text: str) -> str:
    """The page's script, unable to end its ``<script>`` element (``</`` as ``<\\/``, the same
    JavaScript in strings, where the script has it)."""
    if "<!--" in text:
        raise RuntimeError("explorer.js must not hold '<!--'")
    return text.replace("</", "<\\/")


def explorer_html(packed: dict[str, Any]) -> str:
    """The self-contained page of ``packed`` (:func:`.pack.pack_explorer`)."""
    data = json.dumps(packed, separators=(",", ":"), allow_nan=False)
    page = _template("explorer.html")
    for mark in (_DATA, _SCRIPT):
        if page.count(mark) != 1:
            raise RuntimeError(f"explorer.html must hold {mark} once")
    script = _template("explorer.js")
    return (
        page.replace(_TITLE, html.escape(str(packed.get("title", "explorer"))))
        .replace(_SCRIPT, _script_safe(script))
        .replace(
            _DATA,
            '<script type="application/json" id="explorer-data">' + _json_safe(data) + "</script>",
        )
    )


def write_explorer(path: str | Path, packed: dict[str, Any]) -> Path:
    """Write the page of ``packed`` to ``path`` (atomically; parent folders made); returns it."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the explorer is one HTML file: {path} does not end in .html")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(explorer_html(packed), encoding="utf-8")
    tmp.replace(path)
    return path


def iframe_html(page: str, height: int = 900) -> str:
    """``page`` inside an ``<iframe srcdoc>`` (Jupyter's inline display: the page's script runs
    in its own document)."""
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" '
        f'style="width:100%;height:{int(height)}px;border:0" sandbox="allow-scripts"></iframe>'
    )
