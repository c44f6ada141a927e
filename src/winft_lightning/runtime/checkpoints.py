"""Reading checkpoint and weights files: the format from the file's content, tensors only
unless the user trusts the file.

:func:`checkpoint_format` decides what a file is from its bytes, never its suffix: a torch
file (a zip with ``*/data.pkl``, or a legacy pickle), ``.safetensors``, or a NumPy ``.npz``
(Google's ViT weights). Anything else is an :class:`UnreadableCheckpoint` naming the file and
the accepted formats (:data:`ACCEPTED`).

``torch.load(weights_only=True)`` unpickles nothing but tensors and plain containers; a full
unpickle runs whatever code the file names, so a checkpoint from the internet could run
anything. A file that needs it is refused with an error naming the opt-in
(``trust_pickle=true``). Our LightningModules keep the network as the attribute ``net``:
:func:`net_weights` takes its timm state dict out of a checkpoint's; :func:`state_dict_of`
is the one rule for the timm state dict of any torch or safetensors file.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

Format = Literal["npz", "torch", "safetensors"]
ACCEPTED = (
    "a Lightning checkpoint (.ckpt), a timm/torch state dict (.pth, .pt, .bin), "
    "a .safetensors file, or a Google .npz (original ViT or big_vision layout); "
    "the format is read from the file's content, not its suffix"
)
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


class UntrustedCheckpoint(ValueError):
    """The file holds Python objects beyond tensors, and the user has not opted in."""


class UnreadableCheckpoint(ValueError):
    """The file is none of the accepted checkpoint/weights formats (or is truncated)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        super().__init__(
            f"{path} is not a PyTorch checkpoint or weights file that can be read ({reason}). "
            f"Accepted: {ACCEPTED}"
        )


def _zip_format(path: Path) -> Format:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise UnreadableCheckpoint(path, f"a damaged or truncated zip archive: {err}") from err
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    raise UnreadableCheckpoint(path, "a zip archive with neither data.pkl nor only .npy members")


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length, then a JSON header ``{...}`` whose tensors'
    data offsets lie inside the file (else the file is truncated)."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    if not 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER):
        return False
    with path.open("rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return False
    if not isinstance(header, dict):
        return False
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if 8 + n + max(ends, default=0) > size:
        raise UnreadableCheckpoint(path, "a truncated .safetensors file")
    return True


def checkpoint_format(path: str | Path) -> Format:
    """``"npz"``, ``"torch"`` or ``"safetensors"``, from the content of ``path``.

    A zip whose members are ``*.npy`` is a NumPy ``.npz``; a zip with ``*/data.pkl`` or a
    legacy pickle (first byte 0x80) is a torch file; an 8-byte little-endian length followed
    by a JSON header is ``.safetensors``. Else :class:`UnreadableCheckpoint`."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if _is_safetensors(path, head, size):
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch"
    reason = "an empty file" if size == 0 else f"unknown content starting {head[:8]!r}"
    raise UnreadableCheckpoint(path, reason)


def read_checkpoint(
    path: str | Path, *, trust_pickle: bool = False, option: str = "trust_pickle"
) -> Any:
    """The object stored in ``path``: a dict of tensors for ``.safetensors``, of NumPy arrays
    for ``.npz``, whatever ``torch.save`` stored for a torch file.

    ``trust_pickle``: also unpickle arbitrary Python objects (runs code from the file: only
    for files you made or trust). ``option`` names the setting in the error message."""
    path = Path(path)
    fmt = checkpoint_format(path)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise UnreadableCheckpoint(path, f"safetensors: {err}") from err
    if fmt == "npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise UnreadableCheckpoint(path, f"npz: {err}") from err
    try:
        return _torch_load(path, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others
        # a pickle naming Python objects; anything else (garbage, truncation) is not ours
        if "Unsupported global" not in str(err):
            raise UnreadableCheckpoint(path, f"{type(err).__name__}: {str(err)[:200]}") from err
        if not trust_pickle:
            raise UntrustedCheckpoint(
                f"{path} holds Python objects beyond tensors: loading it would unpickle (run) "
                f"code from the file. If you made or trust it, set {option}=true"
            ) from err
    log.warning("%s: full unpickle (%s=true)", path, option)
    return _torch_load(path, weights_only=False)


def _torch_load(path: Path, weights_only: bool) -> Any:
    # an open file: torch.load picks safetensors for a path named *.safetensors (the suffix)
    with path.open("rb") as f:
        return torch.load(f, map_location="cpu", weights_only=weights_only)


def checkpoint_file(
    path: str | Path, option: str = "checkpoint", error: type[Exception] = FileNotFoundError
) -> Path:
    """``path`` if it is a file, else ``error`` naming ``option``: the one existence check of a
    checkpoint a run reads (``ckpt_path``, ``teacher.ckpt``, a teacher or weights file)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{option}={path} does not exist")
    return path


def net_weights(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The ``net.*`` entries of a Lightning state dict, prefix removed (timm keys); empty when
    it has none."""
    return {k[4:]: v for k, v in state_dict.items() if k.startswith("net.")}


_WRAPPERS = ("_orig_mod.", "module.")  # torch.compile and DDP prefixes (timm strips them too)


def _clean(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in state_dict.items():
        while k.startswith(_WRAPPERS):
            k = k.removeprefix(_WRAPPERS[0]).removeprefix(_WRAPPERS[1])
        out[k] = v
    return out


def state_dict_of(obj: Any, path: str | Path = "") -> dict[str, Any]:
    """The timm state dict in a loaded torch/safetensors object (:func:`read_checkpoint`):
    its ``state_dict`` (Lightning) or ``model`` entry when present (as timm's
    ``load_state_dict(use_ema=False)``), ``net.*`` keys of our modules unprefixed, DDP and
    ``torch.compile`` prefixes removed."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise UnreadableCheckpoint(path, f"it holds a {type(obj).__name__}, not a state dict")
    sd = _clean(obj)
    return _clean(net_weights(sd)) or sd
