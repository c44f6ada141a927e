"""Capture the patch-to-patch softmax attention of a timm ViT, one block at a time.

timm's fused attention (SDPA) never forms the softmax matrix, so capture switches the
blocks to the non-fused path for the duration of the capture only, and reads the
probabilities at ``attn.attn_drop`` (identity in eval mode), i.e. with timm's own code.
:func:`embed_tokens` is the ViT stem both this capture and ``models.NetViT`` run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def embed_tokens(model: nn.Module, images: Tensor) -> Tensor:
    """A timm ViT's stem: ``images [B, 3, H, W]`` -> tokens ``[B, T, C]`` as its first block
    receives them (patch embedding, prefix tokens and position embedding, patch drop, pre-norm)."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Force the non-fused attention path on every block of ``model``; restore on exit."""
    attns = [m for m in model.modules() if hasattr(m, "fused_attn") and hasattr(m, "attn_drop")]
    saved = [m.fused_attn for m in attns]
    try:
        for m in attns:
            m.fused_attn = False
        yield
    finally:
        for m, fused in zip(attns, saved, strict=True):
            m.fused_attn = fused


def iter_block_attention(
    model: nn.Module, images: Tensor, patches_only: bool = True
) -> Iterator[Tensor]:
    """Run ``images [B, 3, H, W]`` through a timm VisionTransformer and yield each block's
    softmax attention ``[B, k, N, N]`` (patch-to-patch, prefix tokens removed) as soon as
    that block has run. With ``patches_only=False`` the full ``[B, k, T, T]`` map
    (T = prefix + N) is yielded. Only one block's map is alive at a time if the consumer
    drops it, as :func:`winft_lightning.core.interactions.uncertainty_map` does.

    The model's ``fused_attn`` flags are restored when the generator finishes or is closed.
    """
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise TypeError(f"expected a timm VisionTransformer, got {type(model).__name__}")
    prefix = 0 if not patches_only else int(getattr(model, "num_prefix_tokens", 0))
    captured: list[Tensor] = []

    def grab(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        captured.append(output)

    # Grad mode is thread-local state: a `with` held across `yield` would leak into the
    # consumer's code, so each step enters and leaves no_grad before yielding.
    with unfused_attention(model):
        with torch.no_grad():
            x = embed_tokens(model, images)
        for block in model.blocks:
            handle = block.attn.attn_drop.register_forward_hook(grab)
            try:
                with torch.no_grad():
                    x = block(x)
            finally:
                handle.remove()
            if len(captured) != 1:
                raise RuntimeError(
                    f"{type(block.attn).__name__} did not pass its softmax through attn_drop; "
                    "cannot capture attention from this attention layer"
                )
            attn = captured.pop()
            yield attn[:, :, prefix:, prefix:]
