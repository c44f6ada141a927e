"""Mask members of a sample, per alpha ``awd.a0100.<enc>`` (alpha = 0.100) ``[N, 4]`` int16
windows and ``dip_order.<enc>`` ``[N]`` int16, and beside them the retrained controls a
``data.control`` arm reads instead (:data:`CONTROL_MEMBERS`: which of the two each replaces;
the other stays the teacher's):

- ``random`` (SPEC 9): ``awd_random.a0100.<enc>``, per patch a window of AWD's w x h containing
  p, placed uniformly, and ``dip_order_random.<enc>``, a uniform random order; drawn from a
  generator seeded by the image key;
- ``centred`` (SPEC 10, windows only): ``awd_centred.a0100.<enc>``, per patch a window of AWD's
  w x h centred on p and shifted to fit (``core.claims.centred_windows_like``, C2's control);
- ``blank`` (SPEC 10, order only): ``dip_order_blank.<enc>``, the patches by ascending pixel
  standard deviation in the analyzed view (``core.baselines.blank_scores``), ties in a
  permutation seeded by the image key (the claims pass's, seed 0), so DIP's floor(beta N) drops
  become the blankest floor(beta N) patches;

in one of two encodings:

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

from winft_lightning.core.baselines import (
    ascending_order,
    blank_scores,
    key_seed,
    random_order,
    tie_permutations,
)
from winft_lightning.core.claims import centred_windows_like, place_windows_like
from winft_lightning.core.interactions import check_alpha
from winft_lightning.data.errors import MaskError

ENCODINGS = ("i16z", "npy")
DIP = "dip_order"
DIP_RANDOM = "dip_order_random"
WINDOWS, ORDER = "windows", "order"  # the two kinds of mask member a run reads
# data.control: the members each retrained control arm reads instead of the teacher's (the
# member it does not name stays the teacher's); a run must read at least one of them
CONTROL_MEMBERS = {"random": (WINDOWS, ORDER), "centred": (WINDOWS,), "blank": (ORDER,)}
CONTROLS = tuple(CONTROL_MEMBERS)
# 2: with the random controls beside the teacher's masks; 3: with the centred and blank ones
MASK_FORMAT = 3
BLANK_TIE_SEED = 0  # the blank order's ties: the claims pass's permutation of seed 0


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


def check_control(control: str) -> str:
    """``control`` if it is one of :data:`CONTROLS`, else :class:`MaskError` naming
    ``data.control``."""
    if control not in CONTROL_MEMBERS:
        raise MaskError(f"data.control={control!r} is not one of {CONTROLS} (or null)")
    return control


def mask_names(alpha: float, control: str | None = None) -> tuple[str, str]:
    """(windows, DIP order) member names a run reads: the teacher's, or where ``control``
    replaces that member (:data:`CONTROL_MEMBERS`) the control's, e.g. ``centred`` at alpha
    0.1: ``("awd_centred.a0100", "dip_order")``."""
    if control is None:
        return awd_name(alpha), DIP
    kinds = CONTROL_MEMBERS[check_control(control)]
    windows = f"awd_{control}.{alpha_tag(alpha)}" if WINDOWS in kinds else awd_name(alpha)
    return windows, (f"{DIP}_{control}" if ORDER in kinds else DIP)


def control_names(alphas: Sequence[float], control: str) -> list[str]:
    """The member names (without encoding) ``control`` stores: per alpha its windows and/or
    its one order."""
    kinds = CONTROL_MEMBERS[check_control(control)]
    names = [mask_names(a, control)[0] for a in alphas] if WINDOWS in kinds else []
    return names + ([f"{DIP}_{control}"] if ORDER in kinds else [])


def check_control_reads(control: str | None, reads_order: bool) -> None:
    """Refuse (:class:`MaskError` naming ``data.control``) a control that replaces nothing a
    run reads: every masked run reads the windows, and the DIP order only when it drops
    patches (``reads_order``: model.beta > 0). E.g. ``blank`` on AWD-ViT would train on the
    teacher's own masks under a control's name."""
    if control is None:
        return
    kinds = CONTROL_MEMBERS[check_control(control)]
    if WINDOWS not in kinds and not reads_order:
        raise MaskError(
            f"data.control={control} replaces only the DIP order, which this run does not read "
            "(model.beta = 0 or no DIP): it would train on the teacher's own masks; use it with "
            "an AWD+DIP or WinfT model at model.beta > 0"
        )


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


def centred_controls(
    windows: Mapping[float, np.ndarray], grid: tuple[int, int]
) -> dict[str, np.ndarray]:
    """SPEC 10's centred control of one image: per alpha ``{awd_centred.aXXXX: [N, 4] int16}``,
    each patch's window of the same w x h as ``windows[alpha]``, centred on p and shifted to fit
    (C2's ``centred_windows_like``; no draw)."""
    alphas = sorted(windows)
    win = torch.from_numpy(np.stack([np.asarray(windows[a], dtype=np.int64) for a in alphas]))
    placed = centred_windows_like(win, grid).numpy().astype(np.int16)
    return {mask_names(a, "centred")[0]: placed[i] for i, a in enumerate(alphas)}


def blank_orders(
    images01: torch.Tensor, keys: Sequence[str], grid: tuple[int, int]
) -> torch.Tensor:
    """SPEC 10's blank control of a batch, ``[B, N]`` long: each image's patches by ascending
    pixel standard deviation (``images01`` ``[B, C, H, W]``: the analyzed view in 0..1), ties in
    the permutation seeded by its key (``key_seed(key, BLANK_TIE_SEED)``), so the order is the
    claims pass's blank order (C3, seed 0) and DIP's floor(beta N) drops taken from it are the
    blankest patches."""
    n = grid[0] * grid[1]
    ties = tie_permutations([key_seed(k, BLANK_TIE_SEED) for k in keys], n, images01.device)
    return ascending_order(blank_scores(images01, grid), ties)


def control_arrays(
    key: str,
    windows: Mapping[float, np.ndarray],
    blank_order: np.ndarray,
    grid: tuple[int, int],
) -> dict[str, np.ndarray]:
    """Every control member of one image (:data:`CONTROLS`), ``{name without encoding: int16
    array}``: :func:`random_controls`, :func:`centred_controls` and its ``blank_order`` (a row of
    :func:`blank_orders`)."""
    out = random_controls(key, windows, grid) | centred_controls(windows, grid)
    out[mask_names(1.0, "blank")[1]] = np.asarray(blank_order).astype(np.int16)
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
