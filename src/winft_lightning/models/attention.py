"""Attention layers: AWD (SPEC 2, dense mask or flex block-sparse) and WinfT (SPEC 5).

Both subclass ``timm.layers.Attention`` (same ``__init__`` and parameters, so timm weights load
unchanged) and are passed to timm as ``attn_layer``. They read the batch's inputs from the
network's :class:`~winft_lightning.models.context.NetContext` (``ctx``, attached by
``build_vit``). Shapes: B images, H heads, T = prefix + N tokens, d head dim.

Sparse (flex) path: ``flex_attention`` with a ``BlockMask`` built once per batch by the
context; token order, block size and mask building are described in :mod:`.sparse`. Per-token
projections commute with the token permutation, so only the attention core runs permuted, and
it is undone before the output projection. FlexAttention has no backward on CPU, so the sparse
path trains on GPU only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor

from ..interactions import windows_to_mask
from .context import NetContext
from .sparse import awd_block_mask, block_mask_from_dense, flex, tiled_order

__all__ = [
    "AwdAttention",
    "WinftAttention",
    "awd_attn_mask",
    "awd_block_mask",
    "expand_prefix",
    "tiled_order",
    "winft_logits",
    "winft_window",
]


def _token_mask(
    windows: Tensor | None, keep: Tensor | None, grid: tuple[int, int], num_prefix_tokens: int
) -> Tensor:
    """``[B, T, T]`` bool: patch rows restricted to their windows (all patches when windows is
    None), prefix rows/columns free, key columns of dropped patches (``keep`` False) removed,
    diagonal always True."""
    ref = windows if windows is not None else keep
    b, n = ref.shape[:2]
    p = num_prefix_tokens
    t = p + n
    mask = torch.ones(b, t, t, dtype=torch.bool, device=ref.device)
    if windows is not None:
        mask[:, p:, p:] = windows_to_mask(windows, grid)
    if keep is not None:
        mask[:, :, p:] &= keep.to(device=ref.device, dtype=torch.bool).unsqueeze(1)
    return mask | torch.eye(t, dtype=torch.bool, device=ref.device)


def awd_attn_mask(
    windows: Tensor, grid: tuple[int, int], num_prefix_tokens: int, keep: Tensor | None = None
) -> Tensor:
    """Dense AWD mask for timm's ``model(x, attn_mask=mask)``: ``[B, 1, T, T]`` bool, True =
    may attend. windows ``[B, N, 4]``; patch p attends to its window (SPEC 2), prefix tokens
    unrestricted both ways. keep ``[B, N]`` (optional, DIP key-mask ablation) removes dropped
    patches from every key set. The diagonal is always True, so no row is empty."""
    return _token_mask(windows, keep, grid, num_prefix_tokens).unsqueeze(1)


def _dense_block_mask(mask: Tensor, block_size):
    """Flex ``BlockMask`` from a dense ``[B, T, T]`` bool mask (already in kernel order)."""

    def mask_mod(bi, hi, qi, ki):
        return mask[bi, qi, ki]

    return block_mask_from_dense(mask, mask_mod, block_size)


class _CtxAttention(Attention):
    """timm ``Attention`` with a :class:`NetContext` slot and split-out projection steps."""

    ctx: NetContext | None = None

    def attach(self, ctx: NetContext) -> None:
        """Share the network's context; the sparse path also gets its token order as
        non-persistent buffers (they follow ``.to(device)``, are not in the state dict); None
        for timm's own order (``tile=-1``), which needs no permutation."""
        self.ctx = ctx
        if ctx.sparse:
            perm = tiled_order(ctx.grid, ctx.num_prefix_tokens, ctx.tile)
            if torch.equal(perm, torch.arange(len(perm))):
                perm = None
            self.register_buffer("perm", perm, persistent=False)
            inv = None if perm is None else torch.argsort(perm)
            self.register_buffer("inv_perm", inv, persistent=False)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def _out(self, o: Tensor, x: Tensor) -> Tensor:
        """o ``[B, H, T, d]`` attention output, x the layer input -> ``[B, T, C]``."""
        b, _, t, _ = o.shape
        o = self.norm(o.transpose(1, 2).reshape(b, t, self.attn_dim))
        if self.gate is not None:
            o = o * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(o))

    def _flex(self, q: Tensor, k: Tensor, v: Tensor, block_mask_fn) -> Tensor:
        """Attention core in the sparse token order. q, k, v ``[B, H, T, d]`` in timm order;
        ``block_mask_fn(perm)`` gives the ``BlockMask`` in that order (perm None: timm order).
        Returns ``[B, H, T, d]`` in timm order."""
        if self.training and self.attn_drop.p > 0:
            raise ValueError("the sparse (flex) path has no attention dropout; set attn_drop=0")
        perm = self.perm
        if perm is not None:
            q, k, v = q[:, :, perm], k[:, :, perm], v[:, :, perm]
        ctx = self.ctx
        o = flex(q, k, v, block_mask_fn(perm), self.scale, ctx.kernel_options)
        return o if perm is None else o[:, :, self.inv_perm]


class AwdAttention(_CtxAttention):
    """AWD attention: each patch attends only inside its window; CLS/registers unrestricted.

    An explicit ``attn_mask`` (timm's ``model(x, attn_mask=awd_attn_mask(...))``) wins; otherwise
    the context's flex ``BlockMask`` (sparse) or dense mask is used."""

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        ctx = self.ctx
        if attn_mask is None and ctx is not None:
            if ctx.block_mask is not None:
                q, k, v = self._qkv(x)
                o = self._flex(q, k, v, lambda perm: ctx.block_mask)
                return self._out(o, x)
            attn_mask = ctx.attn_mask
            if attn_mask is None and ctx.attn == "awd":
                raise RuntimeError(
                    "AWD attention without windows: run the forward inside "
                    "batch_context(net, windows=...)"
                )
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)


def winft_logits(q: Tensor, k: Tensor, num_prefix_tokens: int) -> Tensor:
    """``mean_h Q_h K_h^T`` on patch tokens (eq. 8 before the sigmoid), unscaled: ``[B, N, N]``
    float32. q, k ``[B, H, T, d]``. One matmul over the concatenated head dims, since
    ``sum_h Q_h K_h^T = Q K^T``; it runs in the input dtype (autocast) and is returned in float32
    so the sigmoid threshold and the BCE see full precision."""
    b, h, t, d = q.shape
    p = num_prefix_tokens
    qc = q[:, :, p:].transpose(1, 2).reshape(b, t - p, h * d)
    kc = k[:, :, p:].transpose(1, 2).reshape(b, t - p, h * d)
    return (qc @ kc.transpose(1, 2)).float() / h


def winft_window(logits: Tensor) -> Tensor:
    """W (eq. 9): ``w' = sigmoid(logits)``, ``W[i, j] = w'[i, j] > mean_j w'[i, :]`` (strict).
    logits ``[B, N, N]`` -> bool ``[B, N, N]``."""
    w = logits.sigmoid()
    return w > w.mean(dim=-1, keepdim=True)


def expand_prefix(w: Tensor, num_prefix_tokens: int) -> Tensor:
    """Patch block ``[B, N, N]`` -> ``[B, T, T]`` with prefix rows and columns True."""
    if num_prefix_tokens == 0:
        return w
    return F.pad(w, (num_prefix_tokens, 0, num_prefix_tokens, 0), value=True)


class WinftAttention(_CtxAttention):
    """Window-free multi-head attention (SPEC 5, eq. 8-10).

    ``L_h = Q_h K_h^T``; ``W`` from :func:`winft_logits` / :func:`winft_window`; ``mode``:
    "multiply" ``A' = softmax((L_h / sqrt(d)) * W)`` (eq. 10: masked logits become 0) or
    "neg_inf" (masked logits -inf, true restriction; dense SDPA or flex when ``ctx.sparse``).
    After each forward: ``last_count`` ``[B]`` = True entries of W's patch block (E_O), and,
    when the context asks to collect, ``last_logits`` ``[B, N, N]`` (with grad) for the BCE.
    """

    mode: str = "multiply"
    last_logits: Tensor | None = None
    last_count: Tensor | None = None

    def _winft_block_mask(self, w: Tensor, perm: Tensor | None):
        """``BlockMask`` of this layer's own ``[B, T, T]`` mask W in the sparse token order."""
        if perm is not None:
            w = w[:, perm][:, :, perm]
        return _dense_block_mask(w, self.ctx.block_size)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("WinfT attention predicts its own mask; attn_mask is not supported")
        ctx = self.ctx
        p = ctx.num_prefix_tokens if ctx is not None else 0
        sparse = ctx is not None and ctx.sparse
        q, k, v = self._qkv(x)
        logits = winft_logits(q, k, p)
        w = winft_window(logits)
        self.last_count = w.flatten(1).sum(dim=1)
        self.last_logits = logits if ctx is not None and ctx.collect else None
        w = expand_prefix(w, p)  # [B, T, T]
        if self.mode == "multiply":
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = (attn * w.unsqueeze(1)).softmax(dim=-1)
            o = self.attn_drop(attn) @ v
        elif sparse:
            o = self._flex(q, k, v, lambda perm: self._winft_block_mask(w, perm))
        elif self.fused_attn:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=w.unsqueeze(1),
                dropout_p=self.attn_drop.p if self.training else 0.0,
            )  # fmt: skip
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.masked_fill(~w.unsqueeze(1), float("-inf")).softmax(dim=-1)
            o = self.attn_drop(attn) @ v
        return self._out(o, x)
