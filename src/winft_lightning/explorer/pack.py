"""The explorer's data, packed from an :class:`~winft_lightning.core.analysis.Analysis`: pure
(tensors in, a JSON-able dict out; no file, no model).

Per image (:func:`pack_images`): U as 8-bit rows (:mod:`.codec`), U's argmax per row, the U'
hits of every analysed alpha as bitsets (:func:`core.interactions.top_interactions`), the AWD
windows of every alpha (``[N, 4]`` ``(x_l, y_t, x_r, y_b)``, as analysed), the DIP order, the
head-mean attention rows of every block (and, when captured, of every head), the attention
rollout, the mean attention distance per block and head, WinfT's predicted sum of W; the
image as JPEG. Per page (:func:`pack_explorer`): the grid, the alphas, the betas with their
drop counts (:func:`core.interactions.dip_drop_count`), the colour map. The page computes
nothing rounding-sensitive: it reads these integers and bits, and forms the responsive field
(window cells not dropped, plus p) from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from winft_lightning.core import interactions as ia
from winft_lightning.core.analysis import Analysis
from winft_lightning.figures.base import HEAT

from .codec import (
    LEVELS,
    decode_array,
    dequantise_rows,
    encode_array,
    encode_image,
    pack_bits,
    quantise_rows,
)

__all__ = ["DEFAULT_BETAS", "FORMAT", "dequantised", "pack_explorer", "pack_images", "quantised"]

FORMAT = 1
# the beta slider's stops: 0, 0.05, ..., 0.9
DEFAULT_BETAS = tuple(i / 20 for i in range(19))


def quantised(values: Tensor | np.ndarray) -> dict[str, Any]:
    """Rows of non-negative values as ``{"q": u8 array, "scale": f32 array}`` (:mod:`.codec`)."""
    arr = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else values
    q, scale = quantise_rows(arr)
    return {"q": encode_array(q, "u8"), "scale": encode_array(scale.ravel(), "f32")}


def _index_dtype(n: int) -> str:
    if n > np.iinfo(np.uint16).max:
        raise ValueError(f"the explorer stores patch indices as uint16: N={n} is too many")
    return "u16"


def _check(res: Analysis, display: Tensor, winft_w: Tensor | None) -> int:
    if res.u is None or res.order is None or not res.windows:
        raise ValueError("the explorer needs U, the DIP order and the windows of an analysis")
    b, n = res.u.shape[0], res.u.shape[-1]
    if display.dim() != 4 or display.shape[0] != b or display.shape[1] != 3:
        raise ValueError(f"display images must be [{b}, 3, H, W], got {tuple(display.shape)}")
    if res.rows is not None and res.patches != list(range(n)):
        raise ValueError("the explorer's attention rows need every patch (patches=range(N))")
    if winft_w is not None and tuple(winft_w.shape) != (b, n, n):
        raise ValueError(f"winft_w must be [{b}, {n}, {n}], got {tuple(winft_w.shape)}")
    return n


def _image_entry(res: Analysis, i: int, display: Tensor, winft_w: Tensor | None) -> dict:
    u = res.u[i : i + 1].cpu()
    n = u.shape[-1]
    idx = _index_dtype(n)
    entry: dict[str, Any] = {
        "alphas": [float(a) for a in res.windows],  # the order of "hits" and "windows"
        "image": encode_image(display.detach().cpu().permute(1, 2, 0).numpy()),
        "u": quantised(u[0]),
        "u_argmax": encode_array(u[0].argmax(dim=-1).numpy(), idx),
        "hits": [
            encode_array(pack_bits(ia.top_interactions(u, a)[0].numpy()), "u8") for a in res.windows
        ],
        "windows": [encode_array(w[i].cpu().numpy(), idx) for w in res.windows.values()],
        "order": encode_array(res.order[i].cpu().numpy(), idx),
        "attention": None if res.rows is None else quantised(res.rows[i]),
        "head_attention": None if res.head_rows is None else quantised(res.head_rows[i]),
        "rollout": None,
        "distance": None,
        "winft": None if winft_w is None else quantised(winft_w[i].clamp_min(0)),
    }
    if res.rollout is not None:
        entry["rollout"] = encode_array(res.rollout[i].cpu().float().numpy(), "f32")
    if res.attention_distance is not None:
        entry["distance"] = [[float(v) for v in blk] for blk in res.attention_distance[i].cpu()]
    return entry


def pack_images(
    res: Analysis,
    display: Tensor,
    winft_w: Tensor | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One entry per image of ``res`` (B images): ``display [B, 3, H, W]`` in [0, 1] is drawn
    under the maps; ``winft_w [B, N, N]`` WinfT's predicted sum of W (Fig. 10), optional."""
    _check(res, display, winft_w)
    names = list(names) if names is not None else [f"image {i}" for i in range(display.shape[0])]
    out = []
    for i in range(display.shape[0]):
        entry = _image_entry(res, i, display[i].clamp(0, 1), winft_w)
        out.append({"name": str(names[i]), **entry})
    return out


def _colormap() -> dict[str, Any]:
    import matplotlib

    lut = matplotlib.colormaps[HEAT](np.linspace(0.0, 1.0, LEVELS + 1))[:, :3]
    return encode_array(np.rint(lut * 255).astype(np.uint8), "u8", deflate=False)


def pack_explorer(
    images: list[dict[str, Any]],
    *,
    grid: ia.Grid,
    alphas: Sequence[float],
    betas: Sequence[float] = DEFAULT_BETAS,
    blocks: int,
    heads: int,
    patch_size: int,
    img_size: tuple[int, int],
    title: str = "patch interactions",
    source: dict[str, Any] | None = None,
    start_alpha: float | None = None,
    start_beta: float | None = None,
) -> dict[str, Any]:
    """The page's whole data: ``images`` (entries of :func:`pack_images`, analysed at
    ``alphas`` in this order) and what they share. ``betas`` are the beta slider's stops
    (each checked, its drop count computed here); the sliders start at ``start_alpha`` /
    ``start_beta`` (an analysed alpha and a listed beta; default the middle alpha, beta 0)."""
    n = grid[0] * grid[1]
    alphas = [ia.check_alpha(a, "alphas") for a in alphas]
    betas = [ia.check_beta(b, "betas") for b in betas]
    if not alphas or not betas or not images:
        raise ValueError("the explorer needs at least one image, one alpha and one beta")
    for entry in images:
        if entry["alphas"] != alphas:
            raise ValueError(
                f"image {entry['name']!r} was analysed at {entry['alphas']}, not {alphas}"
            )
    start = {"alpha": len(alphas) // 2, "beta": 0}  # the middle alpha, beta 0
    for key, value, stops in (("alpha", start_alpha, alphas), ("beta", start_beta, betas)):
        if value is not None and float(value) not in stops:
            raise ValueError(f"start_{key}={value} is not one of {stops}")
        if value is not None:
            start[key] = stops.index(float(value))
    return {
        "format": FORMAT,
        "title": title,
        "source": dict(source or {}),
        "grid": [int(grid[0]), int(grid[1])],
        "n": n,
        "patch_size": int(patch_size),
        "img_size": [int(img_size[0]), int(img_size[1])],
        "blocks": int(blocks),
        "heads": int(heads),
        "alphas": alphas,
        "betas": betas,
        "drops": [ia.dip_drop_count(b, n) for b in betas],
        "hit_counts": [ia.top_count(a, n) for a in alphas],
        "start": start,
        "levels": LEVELS,
        "colormap": _colormap(),
        "images": images,
    }


def dequantised(entry: dict[str, Any], key: str) -> np.ndarray:
    """An image entry's quantised map ``key`` (``"u"``, ``"attention"``, ...) as the page reads
    it, float64."""
    block = entry[key]
    q = decode_array(block["q"])
    scale = decode_array(block["scale"]).reshape(q.shape[:-1])
    return dequantise_rows(q, scale)
