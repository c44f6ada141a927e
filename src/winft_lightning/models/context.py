"""Per-batch inputs of a network (AWD windows, DIP keep mask, WinfT collection flag).

timm's ``VisionTransformer.forward(x)`` has no slot for per-image data other than
``attn_mask``, so every network built by :func:`~winft_lightning.models.build_vit` carries one
:class:`NetContext`, shared by reference with its attention layers and DIP hooks. The caller fills
it for a forward with :func:`batch_context` (or :func:`set_batch` / :func:`clear_batch`); every
derived tensor (dense mask, flex ``BlockMask``, DIP multiplier) is built there, once per batch on
the windows' device, not once per block. The attention layers only read it, which keeps them
traceable by ``torch.compile`` (the context's tensors become graph inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .sparse import DEFAULT_BLOCK, awd_block_mask, flex_kernel_options

__all__ = ["NetContext", "batch_context", "clear_batch", "get_context", "set_batch"]

CONTEXT_ATTR = "winft_ctx"


@dataclass(eq=False)
class NetContext:
    """Configuration (fixed at build time) and per-batch state of one network.

    Per batch, set by :func:`set_batch`: ``attn_mask`` dense ``[B, 1, T, T]`` bool (AWD and/or
    DIP key mask), ``block_mask`` the same as a flex ``BlockMask`` in the sparse token order (sparse
    path; token order ``tile`` and ``block_size`` as in :mod:`.sparse`), ``token_scale``
    ``[B, T, 1]`` DIP multiplier (1 on prefix tokens), ``collect`` whether
    WinfT layers keep their logits for the loss.
    """

    grid: tuple[int, int]
    num_prefix_tokens: int
    attn: str = "full"
    sparse: bool = False
    dip: str = "none"
    tile: int = 0
    block_size: int | tuple[int, int] = DEFAULT_BLOCK
    attn_mask: Tensor | None = None
    block_mask: object | None = None
    token_scale: Tensor | None = None
    collect: bool = False

    @property
    def kernel_options(self) -> dict | None:
        """Flex kernel tiles for ``block_size`` (None: the kernel's defaults, at 128)."""
        return flex_kernel_options(self.block_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches


def get_context(model: nn.Module) -> NetContext:
    """The :class:`NetContext` of a network from ``build_vit`` (or its ``torch.compile`` wrapper)."""
    ctx = getattr(model, CONTEXT_ATTR, None)
    if ctx is None:
        ctx = getattr(getattr(model, "_orig_mod", None), CONTEXT_ATTR, None)
    if not isinstance(ctx, NetContext):
        raise TypeError(f"{type(model).__name__} has no NetContext: build it with build_vit")
    return ctx


def _check(name: str, t: Tensor, ctx: NetContext, last: int | None) -> None:
    want = (ctx.num_patches,) if last is None else (ctx.num_patches, last)
    if t.dim() != len(want) + 1 or tuple(t.shape[1:]) != want:
        raise ValueError(
            f"{name} must be [B, {', '.join(map(str, want))}] for a {ctx.grid[0]}x{ctx.grid[1]} "
            f"patch grid, got {tuple(t.shape)}"
        )


def set_batch(
    model: nn.Module,
    windows: Tensor | None = None,
    keep: Tensor | None = None,
    collect_winft: bool = False,
) -> None:
    """Install one batch's inputs for the next forward(s) of ``model``.

    windows: ``[B, N, 4]`` AWD windows ``(x_l, y_t, x_r, y_b)`` (required when attn="awd").
    keep: ``[B, N]`` bool DIP mask M (False = dropped patch), e.g. ``interactions.dip_keep``;
    None means no patch dropped. collect_winft: WinfT layers keep ``[B, N, N]`` logits with
    their autograd graph for the loss (training); E_O is always kept.
    """
    from .attention import awd_attn_mask  # local: attention imports context

    ctx = get_context(model)
    clear_batch(model)
    if windows is not None:
        _check("windows", windows, ctx, 4)
        if ctx.attn != "awd":
            raise ValueError(f"windows given to a model built with attn={ctx.attn!r}")
    elif ctx.attn == "awd":
        raise ValueError("attn='awd' needs the batch's windows [B, N, 4]")
    if keep is not None:
        _check("keep", keep, ctx, None)
        if ctx.dip == "none":
            raise ValueError("keep given to a model built without DIP (build_vit(dip=...))")
        keep = keep.to(torch.bool)
        if windows is not None:
            keep = keep.to(windows.device)
    ctx.collect = collect_winft
    key_keep = keep if ctx.dip == "key_mask" else None
    if keep is not None and ctx.dip == "multiply":
        scale = torch.ones(keep.shape[0], ctx.num_tokens, 1, device=keep.device)
        scale[:, ctx.num_prefix_tokens :, 0] = keep.float()
        ctx.token_scale = scale
    if windows is None and key_keep is None:
        return
    if ctx.sparse:
        ctx.block_mask = awd_block_mask(windows, key_keep, ctx)
    else:
        ctx.attn_mask = awd_attn_mask(windows, ctx.grid, ctx.num_prefix_tokens, keep=key_keep)


def clear_batch(model: nn.Module) -> None:
    """Drop the batch inputs installed by :func:`set_batch`."""
    ctx = get_context(model)
    ctx.attn_mask = ctx.block_mask = ctx.token_scale = None
    ctx.collect = False


@contextlib.contextmanager
def batch_context(
    model: nn.Module,
    windows: Tensor | None = None,
    keep: Tensor | None = None,
    collect_winft: bool = False,
) -> Iterator[NetContext]:
    """``with batch_context(net, windows=w, keep=m): logits = net(x)``; cleared on exit so a
    later forward cannot silently reuse another batch's masks. Arguments as :func:`set_batch`."""
    set_batch(model, windows=windows, keep=keep, collect_winft=collect_winft)
    try:
        yield get_context(model)
    finally:
        clear_batch(model)
