"""The accuracy vs E_O trade-off plot over result rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from winft_lightning.core.families import BY_MODULE, BY_NAME
from winft_lightning.figures.base import DPI

# ---------------------------------------------------------------- trade-off


# what a retrained control arm (``data.control``, the study's ``control`` column) replaces the
# teacher's masks with, per family (SPEC 9: T1' and T2'; SPEC 10: T1'' and T2'')
CONTROL_LABELS = {
    ("awd_vit", "random"): "random windows",
    ("awd_dip_vit", "random"): "random windows, random patches dropped",
    ("awd_vit", "centred"): "centred windows",
    ("awd_dip_vit", "blank"): "blankest patches dropped",
}


def _family(row: Mapping[str, Any]) -> str:
    """The legend label of a result row: the family table's label for its ``family`` or
    ``module``, else whatever names the row (``method``, ``name``). A control arm (``control``
    set, or a ``family`` spelt ``<family>:<control>`` as the study writes it) gets its
    family's label and what the control draws, e.g. "AWD-ViT (random windows)"."""
    family = str(row.get("family"))
    name, _, suffix = family.partition(":")
    control = str(row.get("control") or suffix or "")
    known = BY_NAME.get(name) or BY_MODULE.get(str(row.get("module")))
    if known is not None:
        if not control:
            return known.label
        what = CONTROL_LABELS.get((known.name, control), f"{control} control")
        return f"{known.label} ({what})"
    return str(
        row.get("family") or row.get("module") or row.get("method") or row.get("name") or "?"
    )


def _tag(row: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("alpha", "α"), ("beta", "β")):
        val = row.get(key)
        if val is not None and val == val:
            parts.append(f"{sym}={float(val):g}")
    return ", ".join(parts)


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# label offsets in points (right of the marker), tried in turn until one clears the labels
# already placed: arms of one alpha / beta sit at nearly the same E_O and accuracy
_OFFSETS = [(4, 4), (4, -10), (4, 14), (4, -20), (4, 24), (4, -30)]
_CLEAR = (60.0, 9.0)  # points: a label's width and height, roughly (fontsize 7)


def _annotate(ax, points: list[tuple[float, float, str]]) -> None:
    """Each point's alpha / beta tag beside it, at the first offset whose label clears every
    label placed before (measured in points on the final axes), else at the first offset."""
    ax.autoscale_view()
    scale = 72.0 / ax.figure.dpi  # display pixels -> points
    placed: list[tuple[float, float]] = []
    for xv, yv, tag in sorted(points, key=lambda p: (-p[1], p[0])):
        px, py = (c * scale for c in ax.transData.transform((xv, yv)))
        spots = [(px + dx, py + dy) for dx, dy in _OFFSETS]
        free = [i for i, (sx, sy) in enumerate(spots)
                if all(abs(sx - qx) > _CLEAR[0] or abs(sy - qy) > _CLEAR[1] for qx, qy in placed)]  # fmt: skip
        i = free[0] if free else 0
        placed.append(spots[i])
        ax.annotate(tag, (xv, yv), textcoords="offset points", xytext=_OFFSETS[i], fontsize=7)


def tradeoff_figure(
    rows: Iterable[Mapping[str, Any]], x: str = "eo", y: str = "top1", log_x: bool = False
) -> Figure:
    """Accuracy vs E_O: one marker per setting, one line per method family (``family`` or
    ``module``; suffixed with img/patch size when the rows mix geometries), each point
    annotated with its alpha / beta. Rows of one setting (seeds) are averaged, with the
    sample std of y as an error bar. rows: dicts with ``module``, ``alpha``, ``beta``,
    ``top1``, ``eo``, ``eo_ratio``; rows whose x or y is missing or NaN are skipped."""
    rows = [
        r
        for r in rows
        if _number(r.get(x)) == _number(r.get(x)) and _number(r.get(y)) == _number(r.get(y))
    ]
    geoms = {(r.get("img_size"), r.get("patch_size")) for r in rows}
    settings: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        fam = _family(r)
        if len(geoms) > 1:
            fam += f" {r.get('img_size')}px/P{r.get('patch_size')}"
        settings.setdefault((fam, _tag(r)), []).append(r)
    fams: dict[str, list[tuple[float, float, float, str]]] = {}
    for (fam, tag), runs in settings.items():
        ys = np.array([_number(r[y]) for r in runs])
        xv = float(np.mean([_number(r[x]) for r in runs]))
        err = float(ys.std(ddof=1)) if len(ys) > 1 else 0.0
        fams.setdefault(fam, []).append((xv, float(ys.mean()), err, tag))
    fig = Figure(figsize=(6.4, 4.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    markers = "osD^vP*X"
    for k, (fam, pts) in enumerate(sorted(fams.items())):
        pts.sort()
        xs, ys, errs, _ = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker=markers[k % len(markers)],
                    ms=6, lw=1.2, capsize=3, label=fam)  # fmt: skip
    if log_x:
        ax.set_xscale("log")
    _annotate(ax, [(xv, yv, tag) for pts in fams.values() for xv, yv, _, tag in pts if tag])
    names = {"eo": "$E_O$ (attention interactions per image)", "eo_ratio": "$E_O / N^2$"}
    ax.set_xlabel(names.get(x, x))
    seeds = any(len(v) > 1 for v in settings.values())
    ax.set_ylabel(("top-1 accuracy (%)" if y == "top1" else y) + (", mean ± std" if seeds else ""))
    ax.set_title("Accuracy vs attention cost across α and β")
    ax.grid(alpha=0.3)
    if fams:
        ax.legend(fontsize=8, title="method", title_fontsize=8)
    return fig
