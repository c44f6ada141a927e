"""Mask members of a sample, per alpha ``awd.a0100.<enc>`` (alpha = 0.100) ``[N, 4]`` int16
windows and ``dip_order.<enc>`` ``[N]`` int16, and beside them SPEC 9's retrained controls
(``awd_random.a0100.<enc>``: per patch a window of AWD's w x h containing p, placed uniformly;
``dip_order_random.<enc>``: a uniform random order, whose first floor(beta N) are dropped),
drawn from a generator seeded by the image key, in one of two encodings:

- ``i16z`` (default): the int16 values column by column (x_l of every patch, then y_t, ...),
  little-endian, split into a low-byte and a high-byte plane, zlib level 9. No header: the
  shape comes from the manifest's grid. Typically 0.5-1 kB per alpha at N = 576, against
  41 kB for a bit-packed N x N mask.
- ``npy``: a plain ``.npy`` file (``np.load`` reads it), uncompressed.

Decoding validates length, shape, range and structure.
"""

from __future__ import annotations

import hashlib
import io
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from winft_lightning.core.baselines import random_order
from winft_lightning.core.claims import place_windows_like
from winft_lightning.core.interactions import check_alpha
from winft_lightning.data.errors import MaskError

ENCODINGS = ("i16z", "npy")
DIP = "dip_order"
DIP_RANDOM = "dip_order_random"
CONTROLS = ("random",)  # data.control: the masks a retrained control arm reads
MASK_FORMAT = 2  # 2: with the random controls beside the teacher's masks


def alpha_tag(alpha: float) -> str:
    """0.1 -> 'a0100' (alpha in thousandths); alphas finer than 0.001 are refused."""
    a = check_alpha(alpha, "alpha", MaskError)
    milli = round(a * 1000)
    if not math.isclose(milli, a * 1000, abs_tol=1e-6):
        raise MaskError(f"alpha={alpha} is finer than 0.001, the resolution of the mask keys")
    return f"a{milli:04d}"


def awd_name(alpha: float) -> str:
    """Member name without encoding: ``awd.a0100``."""
    return f"awd.{alpha_tag(alpha)}"


def awd_member(alpha: float, encoding: str = "i16z") -> str:
    return f"{awd_name(alpha)}.{encoding}"


def dip_member(encoding: str = "i16z") -> str:
    return f"{DIP}.{encoding}"


def mask_names(alpha: float, control: str | None = None) -> tuple[str, str]:
    """(windows, DIP order) member names a run reads: the teacher's, or a control's."""
    if control is None:
        return awd_name(alpha), DIP
    if control not in CONTROLS:
        raise MaskError(f"data.control={control!r} is not one of {CONTROLS} (or null)")
    return f"awd_{control}.{alpha_tag(alpha)}", f"{DIP}_{control}"


def control_generator(key: str, what: str) -> torch.Generator:
    """A CPU generator seeded by the image key (and what it draws): the same draw for one
    image in every epoch, rank and process, a different one for another image."""
    digest = hashlib.sha256(f"winft-control/{what}/{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def random_controls(
    key: str, windows: Mapping[float, np.ndarray], grid: tuple[int, int]
) -> dict[str, np.ndarray]:
    """SPEC 9's retrained controls of one image: ``{member name without encoding: int16
    array}``, per alpha random windows of the same w x h as ``windows[alpha]`` (``[N, 4]``)
    containing p, and one random order ``[N]``; each seeded by ``key``."""
    alphas = sorted(windows)
    n = grid[0] * grid[1]
    draws = []  # per alpha its own generator: x starts' uniforms, then y starts'
    for alpha in alphas:
        gen = control_generator(key, f"windows/{alpha_tag(alpha)}")
        draws.append([torch.rand((1, n), generator=gen, dtype=torch.float64) for _ in "xy"])
    win = torch.from_numpy(np.stack([np.asarray(windows[a], dtype=np.int64) for a in alphas]))
    x_draw, y_draw = (torch.cat(d) for d in zip(*draws, strict=True))
    drawn = place_windows_like(win, grid, x_draw, y_draw).numpy().astype(np.int16)
    out = {mask_names(a, "random")[0]: drawn[i] for i, a in enumerate(alphas)}
    order = random_order(1, n, control_generator(key, "order"))[0]
    out[mask_names(1.0, "random")[1]] = order.numpy().astype(np.int16)
    return out


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


def match_alpha(alpha: float, stored: Sequence[float]) -> float | None:
    """The member of ``stored`` equal to ``alpha`` (to 1e-9), else None: the one membership
    test of an alpha in a list of analyzed alphas (a manifest's, or ``analyze.alphas``)."""
    for a in stored:
        if math.isclose(float(a), float(alpha), rel_tol=0, abs_tol=1e-9):
            return float(a)
    return None


def find_alpha(alpha: float, stored: Sequence[float], where: str) -> float:
    """The stored alpha equal to ``alpha`` (:func:`match_alpha`), else :class:`MaskError`
    naming the list."""
    found = match_alpha(alpha, stored)
    if found is not None:
        return found
    raise MaskError(
        f"alpha={alpha} is not in the mask set's alphas {list(stored)} ({where}); choose one of "
        "them, or re-run analyze with this alpha in analyze.alphas"
    )


def encode_mask(arr: np.ndarray, encoding: str = "i16z") -> bytes:
    """``[N, 4]`` or ``[N]`` integer array -> member bytes (int16)."""
    a = np.asarray(arr)
    if a.size and (a.min() < -(2**15) or a.max() >= 2**15):
        raise ValueError("mask values do not fit int16")
    a = a.astype("<i2")
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()
    if encoding != "i16z":
        raise ValueError(f"unknown mask encoding {encoding!r}; use one of {ENCODINGS}")
    planes = np.frombuffer(a.T.tobytes(), dtype=np.uint8).reshape(-1, 2).T
    return zlib.compress(planes.tobytes(), 9)


def decode_mask(data: bytes, encoding: str, shape: tuple[int, ...]) -> np.ndarray:
    """Member bytes -> int array of exactly ``shape``; ValueError (or zlib.error) otherwise."""
    if encoding == "npy":
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"dtype {arr.dtype} is not an integer type")
        if arr.shape != shape:
            raise ValueError(f"shape {arr.shape}, expected {shape}")
        return arr
    raw = zlib.decompress(data)
    n = math.prod(shape)
    if len(raw) != 2 * n:
        raise ValueError(f"{len(raw)} bytes decode to {len(raw) // 2} values, expected {shape}")
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(2, n)
    values = np.ascontiguousarray(planes.T).view("<i2").reshape(-1)
    return values.reshape(tuple(reversed(shape))).T if len(shape) == 2 else values


def find_member(members: Mapping[str, bytes], name: str) -> tuple[str, str] | None:
    """``(member, encoding)`` of mask ``name`` (e.g. ``awd.a0100``) in a sample, or None."""
    for enc in ENCODINGS:
        if f"{name}.{enc}" in members:
            return f"{name}.{enc}", enc
    return None


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


def _tar_bytes(n: int) -> int:
    """Bytes a member of n bytes takes in a tar: a 512-byte header plus data padded to 512."""
    return 512 + 512 * math.ceil(n / 512)


class MaskStats:
    """Per-image byte counts of the mask members (payload and in-tar)."""

    def __init__(self, alphas: Sequence[float], encoding: str):
        self.names = [awd_member(a, encoding) for a in alphas] + [dip_member(encoding)]
        self.alpha_names = self.names[:-1]
        self.images = 0
        self.payload = dict.fromkeys(self.names, 0)
        self.tar = 0

    def add(self, members: dict[str, bytes]) -> None:
        self.images += 1
        for name in self.names:
            self.payload[name] += len(members[name])
            self.tar += _tar_bytes(len(members[name]))

    def state(self) -> dict[str, Any]:
        return {"images": self.images, "payload": self.payload, "tar": self.tar}

    def merge(self, state: dict[str, Any]) -> None:
        """Add another rank's counts (its :meth:`state`)."""
        self.images += state["images"]
        self.tar += state["tar"]
        for name, b in state["payload"].items():
            self.payload[name] += b

    def report(self, n: int, alphas: Sequence[float]) -> dict[str, Any]:
        k = max(self.images, 1)
        per = {name: round(b / k, 1) for name, b in self.payload.items()}
        total = sum(self.payload.values()) / k
        bitpacked = math.ceil(n * n / 8)
        per_alpha = [per[a] + per[self.names[-1]] for a in self.alpha_names]
        return {
            "num_patches": n,
            "mask_bytes_per_image": round(total, 1),
            "mask_tar_bytes_per_image": round(self.tar / k, 1),
            "bitpacked_mask_bytes_per_image": bitpacked,
            "bytes_per_member": per,
            "ratio_one_bitpacked_mask_to_all_mask_keys": round(bitpacked / max(total, 1e-9), 2),
            "ratio_per_alpha_min": round(min(bitpacked / b for b in per_alpha), 2),
            "ratio_all_alphas": round(len(alphas) * bitpacked / max(total, 1e-9), 2),
        }
