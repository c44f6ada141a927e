"""Mask members of a sample: ``awd.a0100.npy.gz`` (alpha = 0.100) ``[N, 4]`` int16 windows per
alpha and ``dip_order.npy.gz`` ``[N]`` int16, gzip-compressed ``.npy`` (readers also accept
uncompressed ``.npy``). Decoding validates shape, range and structure."""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from winft_lightning.data.errors import MaskError

DIP_MEMBER = "dip_order.npy"


def alpha_tag(alpha: float) -> str:
    """0.1 -> 'a0100' (alpha in thousandths); alphas finer than 0.001 are refused."""
    a = float(alpha)
    if not 0.0 < a <= 1.0:
        raise MaskError(f"alpha must be in (0, 1], got {alpha}")
    milli = round(a * 1000)
    if not math.isclose(milli, a * 1000, abs_tol=1e-6):
        raise MaskError(f"alpha={alpha} is finer than 0.001, the resolution of the mask keys")
    return f"a{milli:04d}"


def awd_member(alpha: float) -> str:
    return f"awd.{alpha_tag(alpha)}.npy"


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """Validated, de-duplicated alpha list (order kept)."""
    if not alphas:
        raise MaskError("the alpha list is empty: give at least one alpha in (0, 1]")
    tags: dict[str, float] = {}
    for a in alphas:
        tag = alpha_tag(a)
        if tag in tags and not math.isclose(tags[tag], float(a)):
            raise MaskError(f"alphas {tags[tag]} and {a} map to the same key {tag}")
        tags.setdefault(tag, float(a))
    return list(tags.values())


def find_alpha(alpha: float, stored: Sequence[float], where: str) -> float:
    """The stored alpha equal to ``alpha`` (to 1e-9), else :class:`MaskError` naming the list."""
    for a in stored:
        if math.isclose(float(a), float(alpha), rel_tol=0, abs_tol=1e-9):
            return float(a)
    raise MaskError(
        f"alpha={alpha} is not in the mask set's alphas {list(stored)} ({where}); choose one of "
        "them, or re-run analyze with this alpha in analyze.alphas"
    )


def encode_npy(arr: np.ndarray, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=9, mtime=0) if compress else raw


def get_member(members: Mapping[str, bytes], name: str) -> tuple[str, bytes] | None:
    """The member ``name`` or ``name.gz`` (decompressed), or None when neither is there."""
    if name + ".gz" in members:
        return name + ".gz", gzip.decompress(members[name + ".gz"])
    if name in members:
        return name, members[name]
    return None


def decode_npy(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Integer array of exactly ``shape`` from ``.npy`` bytes; ValueError otherwise."""
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"dtype {arr.dtype} is not an integer type")
    if arr.shape != shape:
        raise ValueError(f"shape {arr.shape}, expected {shape}")
    return arr


def check_windows(win: np.ndarray, grid: tuple[int, int]) -> None:
    """``[N, 4]`` windows must be inside the grid, ordered, and contain their own patch."""
    h, w = grid
    x_l, y_t, x_r, y_b = (win[:, i].astype(np.int64) for i in range(4))
    p = np.arange(h * w)
    x, y = p % w, p // w
    ok = (x_l >= 0) & (x_l <= x) & (x <= x_r) & (x_r < w)
    ok &= (y_t >= 0) & (y_t <= y) & (y <= y_b) & (y_b < h)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"window of patch {bad} {win[bad].tolist()} is not a box around it")


def check_order(order: np.ndarray, n: int) -> None:
    """``[N]`` DIP order must be a permutation of 0..N-1."""
    if order.min() < 0 or order.max() >= n or np.bincount(order, minlength=n).max() != 1:
        raise ValueError(f"is not a permutation of 0..{n - 1}")
