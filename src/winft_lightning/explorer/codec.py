"""The explorer's array encodings, in memory only: 8-bit maps with one scale per row, bitsets,
little-endian typed arrays as base64 (deflated when that is smaller), and the image as JPEG.

The one lossy step is :func:`quantise_rows`: a row ``v`` (non-negative) is stored as
``q = round(v / s)`` in 0..255 with ``s = float32(max(v) / 255)``, read back as ``q * s``. Its
error is at most half a step, ``|v - q * s| <= s / 2`` (:func:`max_error`): 1/510 of the row's
maximum, 0.196 % (up to float32's rounding of ``s``, a factor within 1 + 6e-8). Everything rounding-sensitive (windows, DIP order, drop counts, U' hits, U's
argmax) is stored exactly, as the integers or bits Python computed.

Each array is a dict ``{"dtype": "u8" | "u16" | "f32", "shape": [...], "deflate": bool,
"data": base64}``; :func:`decode_array` reads one back as the page does (the tests use it).
"""

from __future__ import annotations

import base64
import io
import zlib
from typing import Any

import numpy as np

__all__ = [
    "LEVELS",
    "decode_array",
    "dequantise_rows",
    "encode_array",
    "encode_image",
    "max_error",
    "pack_bits",
    "quantise_rows",
]

LEVELS = 255  # the 8-bit maps: q in 0..LEVELS, one scale per row
_DTYPES = {"u8": np.dtype("<u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}


def quantise_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values [..., M]`` (finite, >= 0) -> ``(q uint8 [..., M], scale float32 [...])`` with
    ``q * scale`` within :func:`max_error` of ``values``; an all-zero row has scale 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size and not np.isfinite(v).all():
        raise ValueError("quantise_rows: values hold NaN or infinity")
    if v.size and v.min() < 0:
        raise ValueError(f"quantise_rows: values must be >= 0, got a minimum of {v.min():.3g}")
    top = v.max(axis=-1) if v.shape[-1] else np.zeros(v.shape[:-1])
    scale = (top / LEVELS).astype(np.float32)
    step = scale.astype(np.float64)[..., None]
    q = np.where(step > 0, np.rint(v / np.where(step > 0, step, 1.0)), 0.0)
    return np.clip(q, 0, LEVELS).astype(np.uint8), scale


def dequantise_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q * scale`` per row, float64: what the page shows."""
    return q.astype(np.float64) * np.asarray(scale, dtype=np.float64)[..., None]


def max_error(scale: np.ndarray) -> np.ndarray:
    """The largest ``|value - q * scale|`` :func:`quantise_rows` allows per row: ``scale / 2``,
    that is ``row max / 510``."""
    return np.asarray(scale, dtype=np.float64) / 2


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """A bool array as bits, flat index i at byte ``i >> 3``, bit ``i & 7`` (little bit order)."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel(), bitorder="little")


def encode_array(array: np.ndarray, dtype: str, deflate: bool = True) -> dict[str, Any]:
    """``array`` as the page's typed array ``dtype`` ("u8", "u16", "f32"), base64; deflated
    (zlib, read by the browser's ``DecompressionStream("deflate")``) when that is smaller. An
    integer array must fit ``dtype`` exactly."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    a = np.asarray(array)
    want = _DTYPES[dtype]
    if want.kind == "u" and a.size:
        if not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype, np.bool_):
            raise ValueError(f"{dtype} needs integers, got {a.dtype}")
        if a.min() < 0 or a.max() > np.iinfo(want).max:
            raise ValueError(f"values {a.min()}..{a.max()} do not fit {dtype}")
    raw = np.ascontiguousarray(a, dtype=want).tobytes()
    packed = zlib.compress(raw, 9) if deflate else raw
    small = deflate and len(packed) < len(raw)
    data = base64.b64encode(packed if small else raw).decode("ascii")
    return {"dtype": dtype, "shape": list(a.shape), "deflate": small, "data": data}


def decode_array(encoded: dict[str, Any]) -> np.ndarray:
    """The array :func:`encode_array` wrote, as the page decodes it."""
    raw = base64.b64decode(encoded["data"])
    if encoded["deflate"]:
        raw = zlib.decompress(raw)
    return np.frombuffer(raw, dtype=_DTYPES[encoded["dtype"]]).reshape(encoded["shape"])


def encode_image(image: np.ndarray, quality: int = 90) -> dict[str, str]:
    """An image ``[H, W, 3]`` float in [0, 1] as a JPEG ``{"mime", "data": base64}``."""
    from PIL import Image

    rgb = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return {"mime": "image/jpeg", "data": base64.b64encode(buf.getvalue()).decode("ascii")}
