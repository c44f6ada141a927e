"""The model-randomisation null of SPEC.md 10 (Adebayo et al. 2018, "Sanity checks for saliency
maps"): a teacher with its weights re-initialised by timm's own init, all at once or cascading
from the top (the head and the last blocks) down to the first block.

One seed draws one fully re-initialised network (timm's ``VisionTransformer.init_weights``, the
init the teacher was built with, on a CPU copy inside :func:`torch.random.fork_rng`, so the
global RNG is untouched and the weights do not depend on the device). ``"all"`` is that network;
``"cascade"`` at depth k takes from it the top of the network (final norms, pooling, heads:
what comes after the last block) and the last k blocks, and keeps the teacher's weights below.
So the cascade is nested (depth k + 1 = depth k plus block L - k - 1, whose random weights are
the same at every depth) and depth L differs from ``"all"`` only in the embeddings (patch
embedding, position embedding, prefix tokens, pre-norm).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["MODES", "TOP_MODULES", "randomised", "reinitialised_keys"]

MODES = ("all", "cascade")
# what a timm ViT (or DeiT's distilled one) runs after its last block
TOP_MODULES = ("norm", "fc_norm", "attn_pool", "head", "head_drop", "head_dist")


def _depth(model: nn.Module, mode: str, depth: int | None) -> int:
    """The number of blocks re-initialised from the last, checked against the model."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "init_weights"):
        raise TypeError(f"{type(model).__name__} is not a timm VisionTransformer (no blocks)")
    total = len(blocks)
    if mode == "all":
        if depth not in (None, total):
            raise ValueError(f'mode "all" re-initialises all {total} blocks, got depth={depth}')
        return total
    if depth is None or not 0 <= int(depth) <= total:
        raise ValueError(f'mode "cascade" needs a depth in 0..{total}, got {depth}')
    return int(depth)


def reinitialised_keys(model: nn.Module, mode: str, depth: int | None = None) -> list[str]:
    """The state-dict keys :func:`randomised` redraws for ``(mode, depth)``, in the model's
    order: every key for ``"all"``; for ``"cascade"`` the top modules' and the last ``depth``
    blocks'."""
    k = _depth(model, mode, depth)
    keys = list(model.state_dict())
    if mode == "all":
        return keys
    first = len(model.blocks) - k
    prefixes = tuple(f"{m}." for m in TOP_MODULES)
    prefixes += tuple(f"blocks.{i}." for i in range(first, len(model.blocks)))
    return [key for key in keys if key.startswith(prefixes)]


def _fresh(model: nn.Module, seed: int) -> nn.Module:
    """A CPU copy of ``model`` re-initialised by timm's own init, seeded, the global RNG kept."""
    fresh = copy.deepcopy(model).to("cpu")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(seed))
        fresh.init_weights()  # timm: pos/prefix tokens, then every module (reset_parameters too)
    return fresh


def randomised(
    model: nn.Module, mode: str = "all", depth: int | None = None, *, seed: int = 0
) -> nn.Module:
    """A deep copy of the timm ViT ``model`` with its weights re-initialised (``model`` is not
    changed): ``mode="all"`` every weight (``depth`` None or the block count); ``"cascade"``
    the top of the network and the last ``depth`` blocks (0: only the top, which leaves U as
    it is). The same seed gives the same weights; the architecture, device, dtypes, state-dict
    keys and train/eval mode are the model's."""
    keys = reinitialised_keys(model, mode, depth)
    fresh_state = _fresh(model, seed).state_dict()
    out = copy.deepcopy(model)
    state = out.state_dict()
    with torch.no_grad():
        for key in keys:
            state[key].copy_(fresh_state[key])
    return out
