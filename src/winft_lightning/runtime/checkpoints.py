"""Reading checkpoint and weights files: tensors only, unless the user trusts the file.

``torch.load(weights_only=True)`` unpickles nothing but tensors and plain containers; a full
unpickle runs whatever code the file names, so a checkpoint from the internet could run
anything. A file that needs it is refused with an error naming the opt-in
(``trust_pickle=true``); ``.safetensors`` files are read with safetensors.
Our LightningModules keep the network as the attribute ``net``: :func:`net_weights` takes its
timm state dict out of a checkpoint's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class UntrustedCheckpoint(ValueError):
    """The file holds Python objects beyond tensors, and the user has not opted in."""


def read_checkpoint(
    path: str | Path, *, trust_pickle: bool = False, option: str = "trust_pickle"
) -> Any:
    """The object stored in ``path`` (a dict of tensors for ``.safetensors``).

    ``trust_pickle``: also unpickle arbitrary Python objects (runs code from the file: only
    for files you made or trust). ``option`` names the setting in the error message."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others
        # a pickle naming Python objects; anything else (garbage, truncation) is not ours
        if "Unsupported global" not in str(err):
            raise
        if not trust_pickle:
            raise UntrustedCheckpoint(
                f"{path} holds Python objects beyond tensors: loading it would unpickle (run) "
                f"code from the file. If you made or trust it, set {option}=true"
            ) from err
    log.warning("%s: full unpickle (%s=true)", path, option)
    return torch.load(path, map_location="cpu", weights_only=False)


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
