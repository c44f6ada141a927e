"""timm networks with weights: from a local file of any accepted format, or timm's hub.

:func:`create_with_weights` is the one way a weights file reaches a timm model
(``build_vit(checkpoint=...)``, ``load_teacher``'s plain files): the file's content decides
(:func:`~winft_lightning.runtime.checkpoints.checkpoint_format`). A torch or safetensors file
goes to timm as a state dict, declaring the file's own class count so a head of the right size
is kept and another is replaced by a fresh one; a Google ``.npz`` (original ViT
``Transformer/encoderblock_{i}/...`` or big_vision ``params/...``) goes through timm's own
npz loader (``VisionTransformer.load_pretrained``), which loads the head only when its size
matches. Both resample the position embedding to the model's grid and the patch embedding to
its patch size. :func:`create_pretrained` loads timm's hub weights (the HF cache; offline with
``HF_HUB_OFFLINE=1``) and names the repo and file when they are missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import timm
from torch import nn

from winft_lightning.runtime.checkpoints import (
    UnreadableCheckpoint,
    checkpoint_format,
    read_checkpoint,
    state_dict_of,
)

__all__ = [
    "NpzLayout",
    "PretrainedWeightsMissing",
    "create_pretrained",
    "create_with_weights",
    "npz_layout",
]

# where timm's npz loader looks for Google's layout (``_load_weights``)
NPZ_PREFIXES = ("", "opt/target/", "params/", "params/img/")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm asks the hub for, in order


class PretrainedWeightsMissing(FileNotFoundError):
    """timm's hub weights of a model are neither in the local HF cache nor downloadable."""


class NpzLayout(NamedTuple):
    prefix: str  # "" original ViT layout, "params/" big_vision, ...
    classes: int  # the size of head/bias, 0 without a head
    depth: int  # transformer blocks


def npz_layout(path: str | Path) -> NpzLayout:
    """The layout of a Google ViT ``.npz`` (:class:`NpzLayout`); :class:`UnreadableCheckpoint`
    for an ``.npz`` in no layout timm reads."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        for prefix in NPZ_PREFIXES:
            if f"{prefix}embedding/kernel" in files:
                head = f"{prefix}head/bias"
                stacked = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"
                if stacked in files:  # scanned layers: one array per name, blocks stacked
                    depth = int(z[stacked].shape[0])
                else:
                    block = re.compile(rf"{re.escape(prefix)}Transformer/encoderblock_(\d+)/")
                    depth = len({m[1] for f in files if (m := block.match(f))})
                classes = int(z[head].shape[-1]) if head in files else 0
                return NpzLayout(prefix, classes, depth)
    raise UnreadableCheckpoint(
        path, f"a NumPy .npz without Google's ViT layout (no embedding/kernel under {NPZ_PREFIXES})"
    )


def _drop_state_dict(model: nn.Module) -> None:
    """Do not keep a second copy of the weights on the model's pretrained config."""
    for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)


def create_with_weights(
    model_name: str, path: str | Path, obj: Any = None, **kwargs: Any
) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)`` with the weights of ``path``.

    ``obj``: the file's content when the caller has read it already (a torch/safetensors
    file; :func:`~winft_lightning.runtime.checkpoints.read_checkpoint`). The classifier head
    is loaded when its size equals ``num_classes`` (the file's own count when ``num_classes``
    is not in ``kwargs``), else the model keeps its fresh head."""
    path = os.fspath(path)
    if checkpoint_format(path) == "npz":
        return _create_from_npz(model_name, path, **kwargs)
    sd = state_dict_of(read_checkpoint(path) if obj is None else obj, path)
    head = sd.get("head.weight")
    # timm drops the head whenever num_classes differs from the *registry* cfg's count, which
    # would discard a fine-tuned head of the right size; declare the file's own count instead.
    overlay = {"state_dict": sd, "num_classes": int(head.shape[0]) if head is not None else 0}
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    _drop_state_dict(model)
    return model


def _create_from_npz(model_name: str, path: str, **kwargs: Any) -> nn.Module:
    """Build, check the depth, then timm's own npz loader (``load_pretrained`` =
    ``vision_transformer._load_weights``: the pos-embed resampled to the model's grid, the
    patch embedding to its patch size, the head loaded iff its size equals the model's)."""
    layout = npz_layout(path)
    # the file's class count is the model's when num_classes is not given (as for state dicts)
    overlay = {"file": path, "custom_load": True, "num_classes": layout.classes}
    model = timm.create_model(
        model_name, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs
    )
    blocks = len(getattr(model, "blocks", ()))
    if layout.depth != blocks:  # timm's loader would silently read the first blocks only
        raise ValueError(f"{path} has {layout.depth} transformer blocks, the model {blocks}")
    if not hasattr(model, "load_pretrained"):
        raise ValueError(f"{model_name} has no npz loader (load_pretrained) for {path}")
    model.load_pretrained(path)
    return model


def _hub_source(model_name: str) -> tuple[str, tuple[str, ...]]:
    """(repo id or url, file names) that timm's hub path asks for ``model_name``."""
    if model_name.startswith("hf-hub:"):
        return model_name[len("hf-hub:") :], HUB_FILES
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return model_name, HUB_FILES
    if cfg.hf_hub_id:
        return cfg.hf_hub_id, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    return str(cfg.url or model_name), ()


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors

    names = ("EntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError",
             "OfflineModeIsEnabled", "HfHubHTTPError")  # fmt: skip
    return (OSError, *(getattr(errors, n) for n in names if hasattr(errors, n)))


def create_pretrained(model_name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, pretrained=True, **kwargs)``: timm's own weights of
    the tagged model (e.g. ``vit_base_patch16_224.augreg_in21k``) from the Hugging Face hub
    through the local cache (``HF_HOME``/``HF_HUB_CACHE``; no network with
    ``HF_HUB_OFFLINE=1``). Missing weights: :class:`PretrainedWeightsMissing` naming the repo
    id, the file names and the cache."""
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except _hub_errors() as err:
        from huggingface_hub import constants

        repo, files = _hub_source(model_name)
        wanted = " or ".join(files) if files else "its weights file"
        offline = " (HF_HUB_OFFLINE=1: the cache only)" if constants.is_offline_mode() else ""
        get = f"`hf download {repo} {files[0]}`" if files else f"from {repo}"
        raise PretrainedWeightsMissing(
            f"model.net.pretrained=true: timm's weights of {model_name} could not be loaded: "
            f"repo {repo}, file {wanted}, not in the Hugging Face cache {constants.HF_HUB_CACHE}"
            f"{offline} nor downloadable ({type(err).__name__}: {str(err)[:300]}). Download "
            f"them where there is network ({get}) into that cache, or set "
            "model.net.checkpoint=<file>"
        ) from err
