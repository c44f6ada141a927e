"""Attention layers: AWD (SPEC 2, dense mask or flex block-sparse) and WinfT (SPEC 5).

Both subclass ``timm.layers.Attention`` (same ``__init__`` and parameters, so timm weights load
unchanged) and are passed to timm as ``attn_layer``. Like timm's ``forward(x, attn_mask=None)``
they take the call's inputs as an argument, ``forward(x, attn_mask=None, inputs=None)`` with
``inputs`` a :class:`~winft_lightning.models.inputs.NetInputs`, and keep nothing of a call.
Their build-time configuration is the network's :class:`~winft_lightning.models.inputs.NetSpec`
(``spec``, attached by ``build_vit``). Shapes: B images, H heads, T = prefix + N tokens, d head
dim.

Sparse (flex) path: ``flex_attention`` with a ``BlockMask`` built once per batch by
:func:`~winft_lightning.models.inputs.net_inputs`; token order, block size and mask building are
described in :mod:`.sparse`. Per-token projections commute with the token permutation, so only
the attention core runs permuted, and it is undone before the output projection. FlexAttention
has no backward on CPU, so the sparse path trains on GPU only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor

from winft_lightning.core.winft import fused_modes, winft_attention, winft_logits, winft_window

from .inputs import NetInputs, NetSpec, awd_attn_mask
from .sparse import awd_block_mask, block_mask_from_dense, flex, tiled_order

__all__ = [
    "AwdAttention",
    "NetAttention",
    "WinftAttention",
    "WinftBlockOutput",
    "awd_attn_mask",
    "awd_block_mask",
    "expand_prefix",
    "tiled_order",
    "winft_logits",
    "winft_window",
]


class WinftBlockOutput(NamedTuple):
    """What one WinfT attention returns beside its output: ``logits`` ``[B, N, N]`` float32
    ``mean_h Q_h K_h^T`` with grad (w' = sigmoid(logits)), None unless ``inputs.collect``;
    ``count`` ``[B]`` True entries of W's patch block (E_O of this block); ``bce`` this block's
    scalar ``BCE(w', inputs.w_gt)`` (eq. 12, mean over images and N*N entries), None without
    ``inputs.w_gt``."""

    logits: Tensor | None
    count: Tensor
    bce: Tensor | None = None


def _dense_block_mask(mask: Tensor, block_size):
    """Flex ``BlockMask`` from a dense ``[B, T, T]`` bool mask (already in kernel order)."""

    def mask_mod(bi, hi, qi, ki):
        return mask[bi, qi, ki]

    return block_mask_from_dense(mask, mask_mod, block_size)


class NetAttention(Attention):
    """timm ``Attention`` with the network's :class:`NetSpec` and split-out projection steps."""

    spec: NetSpec | None = None

    def attach(self, spec: NetSpec) -> None:
        """Take the network's (immutable) spec; the sparse path also gets its token order as
        non-persistent buffers (they follow ``.to(device)``, are not in the state dict); None
        for timm's own order (``tile=-1``), which needs no permutation."""
        self.spec = spec
        if spec.sparse:
            perm = tiled_order(spec.grid, spec.num_prefix_tokens, spec.tile)
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
        o = flex(q, k, v, block_mask_fn(perm), self.scale, self.spec.kernel_options)
        return o if perm is None else o[:, :, self.inv_perm]


class AwdAttention(NetAttention):
    """AWD attention: each patch attends only inside its window; CLS/registers unrestricted.

    An explicit ``attn_mask`` (timm's ``model(x, attn_mask=awd_attn_mask(...))``) wins; otherwise
    the call's flex ``inputs.block_mask`` (sparse) or dense ``inputs.attn_mask`` is used."""

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        inputs: NetInputs | None = None,
    ) -> Tensor:
        spec = self.spec
        if attn_mask is None and spec is not None:
            if inputs is not None and inputs.block_mask is not None:
                q, k, v = self._qkv(x)
                o = self._flex(q, k, v, lambda perm: inputs.block_mask)
                return self._out(o, x)
            attn_mask = inputs.attn_mask if inputs is not None else None
            if attn_mask is None and spec.attn == "awd":
                raise RuntimeError("AWD attention without windows: call net(x, windows=...)")
        mask = self._logit_mask(attn_mask, x, inputs)
        return super().forward(x, attn_mask=mask, is_causal=is_causal)

    def _logit_mask(
        self, attn_mask: Tensor | None, x: Tensor, inputs: NetInputs | None
    ) -> Tensor | None:
        """The mask timm's ``forward`` gets: ``attn_mask`` as it is (a subclass adds a bias,
        :class:`~winft_lightning.models.distance.DistanceAttention`)."""
        return attn_mask


def expand_prefix(w: Tensor, num_prefix_tokens: int) -> Tensor:
    """Patch block ``[B, N, N]`` -> ``[B, T, T]`` with prefix rows and columns True."""
    if num_prefix_tokens == 0:
        return w
    return F.pad(w, (num_prefix_tokens, 0, num_prefix_tokens, 0), value=True)


class WinftAttention(NetAttention):
    """Window-free multi-head attention (SPEC 5, eq. 8-10, 12).

    ``L_h = Q_h K_h^T``; ``W`` from :func:`winft_logits` / :func:`winft_window`; ``mode``:
    "multiply" ``A' = softmax((L_h / sqrt(d)) * W)`` (eq. 10: masked logits become 0) or
    "neg_inf" (masked logits -inf, true restriction; flex when ``spec.sparse``).
    ``attn(x)`` returns the output, as timm's; ``attn(x, inputs=...)`` returns
    ``(output, WinftBlockOutput(logits, count, bce))``: the logits (with grad) only when
    ``inputs.collect``; the count (E_O) always; the BCE against ``inputs.w_gt`` when given.

    The dense layer runs :func:`~winft_lightning.core.winft.winft_attention` (one autograd
    function per block that keeps no ``N x N`` float for the backward, the BCE taken inside).
    :meth:`unfused` is the plain-op reference, run where that cannot be: ``fused_attn`` off
    (attention capture reads the softmax at ``attn_drop``), attention dropout in training, the
    sparse (flex) path, and "neg_inf" off the CPU (fused SDPA with W as its mask).
    """

    mode: str = "multiply"

    def _winft_block_mask(self, w: Tensor, perm: Tensor | None):
        """``BlockMask`` of this layer's own ``[B, T, T]`` mask W in the sparse token order."""
        if perm is not None:
            w = w[:, perm][:, :, perm]
        return _dense_block_mask(w, self.spec.block_size)

    def unfused(self, q: Tensor, k: Tensor, v: Tensor, p: int) -> tuple[Tensor, Tensor, Tensor]:
        """eq. 8-10 in plain ops: q, k, v ``[B, H, T, d]`` -> (output ``[B, H, T, d]``,
        logits ``[B, N, N]``, W ``[B, N, N]``); the softmax passes through ``attn_drop``
        unless ``fused_attn`` (then "neg_inf" runs fused SDPA, W its mask)."""
        logits = winft_logits(q, k, p)
        w = winft_window(logits)
        wt = expand_prefix(w, p).unsqueeze(1)  # [B, 1, T, T]
        if self.spec is not None and self.spec.sparse:
            o = self._flex(q, k, v, lambda perm: self._winft_block_mask(wt[:, 0], perm))
            return o, logits, w
        if self.mode == "neg_inf" and self.fused_attn:
            dropout = self.attn_drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, wt, dropout), logits, w
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn * wt if self.mode == "multiply" else attn.masked_fill(~wt, float("-inf"))
        return self.attn_drop(attn.softmax(dim=-1)) @ v, logits, w

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        inputs: NetInputs | None = None,
    ) -> Tensor | tuple[Tensor, WinftBlockOutput]:
        if attn_mask is not None or is_causal:
            raise ValueError("WinfT attention predicts its own mask; attn_mask is not supported")
        spec = self.spec
        p = spec.num_prefix_tokens if spec is not None else 0
        target = inputs.w_gt if inputs is not None else None
        q, k, v = self._qkv(x)
        sparse = spec is not None and spec.sparse
        dropout = self.training and self.attn_drop.p > 0
        if self.fused_attn and not sparse and not dropout and self.mode in fused_modes(x.device):
            o, logits, w, bce = winft_attention(q, k, v, p, self.scale, self.mode, target)
        else:
            o, logits, w = self.unfused(q, k, v, p)
            bce = None if target is None else F.binary_cross_entropy_with_logits(logits, target)
        out = self._out(o, x)
        if inputs is None:
            return out
        count = w.flatten(1).sum(dim=1)
        return out, WinftBlockOutput(logits if inputs.collect else None, count, bce)
