"""DIP's multiply network (SPEC 3) at the cost of the patches it keeps.

``build_vit(dip="multiply")`` multiplies every block's input tokens by the keep mask M, so a
dropped patch enters each block as the zero vector. All dropped patches are then the same
token: after ``norm1`` each is the LayerNorm's bias, so each gives every head the same key and
the same value, and what a dropped patch computes as a query is zeroed again at the next
block and never reaches the class token. Hence, exactly (up to float summation order):

    softmax over (kept keys, m copies of k0)  ==  softmax over (kept keys, k0 with logit + log m)

:func:`forward_kept` runs the network on the prefix tokens, the kept patches and ONE zero
token whose attention logit carries ``+log m`` (an additive SDPA mask), T' = P + (N - m) + 1
tokens instead of P + N; its last block runs the MLP on the prefix tokens only (the head reads
nothing else). The claims pass drops floor(beta N) patches per image, the same count
for every image of a batch, so the kept tokens gather into a dense ``[B, T', C]`` batch. At the
claims' betas 0.1..0.9 a forward costs about half the dense one.

With a distance bias (:mod:`.distance`) the m dropped keys still share k0 and v0 but each
has its own position's bias, so query i's logit on the zero token is ``q_i k0 + log sum_j
exp(-softplus(s_h) d(i, j))`` over the dropped j: the layer adds that (less ``log m``) at the
kept patches' positions, handed down as ``NetInputs(kept=...)``.

Only for networks whose logits read the prefix tokens (``global_pool`` "token"): a pooled head
(``avg``, ``map``) reads the dropped patches' outputs too, and is refused.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from winft_lightning.core.capture import embed_tokens

from .attention import NetAttention
from .inputs import NetInputs, net_spec

__all__ = ["forward_kept", "supports_forward_kept"]


def supports_forward_kept(net: nn.Module) -> bool:
    """Whether :func:`forward_kept` equals ``net(x, keep=keep)`` for ``net``: a ``build_vit``
    network with full attention (a distance bias too: it follows the kept positions), DIP
    "multiply" and a head on the prefix tokens."""
    spec = net_spec(net)
    return (
        spec.attn == "full"
        and spec.dip == "multiply"
        and getattr(net, "global_pool", None) == "token"
        and spec.num_prefix_tokens > 0
    )


def _gather_kept(tokens: Tensor, keep: Tensor, prefix: int) -> tuple[Tensor, int, Tensor]:
    """``[B, P + K (+1), C]``: the prefix tokens, the kept patch tokens in index order and,
    when any patch is dropped, one zero token; m, the dropped count (same for every row); and
    the kept patches' indices ``[B, K]``."""
    b, n = keep.shape
    kept = keep.sum(dim=1)
    k = int(kept[0])
    if not bool((kept == k).all()):
        raise ValueError(f"forward_kept needs the same kept count per image, got {kept.tolist()}")
    index = keep.nonzero()[:, 1].view(b, k)  # row-major: each row's kept patches, ascending
    c = tokens.shape[-1]
    patches = tokens[:, prefix:].gather(1, index.unsqueeze(-1).expand(b, k, c))
    parts = [tokens[:, :prefix], patches]
    if k < n:
        parts.append(tokens.new_zeros(b, 1, c))
    return torch.cat(parts, dim=1), n - k, index


def forward_kept(
    net: nn.Module, images: Tensor, keep: Tensor, tokens: Tensor | None = None
) -> Tensor:
    """``net(images, keep=keep)``'s class logits ``[B, classes]`` without the dropped patches'
    tokens (see the module docstring). ``net`` from ``build_vit(dip="multiply")`` with full
    attention (:func:`supports_forward_kept`); images ``[B, 3, H, W]``; keep ``[B, N]`` bool
    with the same number of True per row; ``tokens``: ``embed_tokens(net, images)`` when the
    caller already has it (one stem for many keep masks of one batch). Equals the dense
    network's logits to float rounding (held to 1e-5 by the tests)."""
    if not supports_forward_kept(net):
        raise ValueError(
            "forward_kept needs build_vit(attn='full', dip='multiply') with global_pool='token'"
        )
    spec = net_spec(net)
    if keep.dim() != 2 or keep.shape[1] != spec.num_patches:
        raise ValueError(f"keep must be [B, {spec.num_patches}], got {tuple(keep.shape)}")
    keep = keep.to(device=images.device, dtype=torch.bool)
    if tokens is None:
        tokens = embed_tokens(net, images)
    x, m, index = _gather_kept(tokens, keep, spec.num_prefix_tokens)
    bias = None
    if m > 0:  # the one zero token stands for the m dropped ones: +log m on its logit
        bias = x.new_zeros(1, 1, 1, x.shape[1])
        bias[..., -1] = math.log(m)
    inputs = NetInputs(kept=index)  # a distance-biased layer's positions
    *body, last = net.blocks
    for blk in body:
        x, _ = blk(_zero_last(x, m), inputs, attn_mask=bias)
    # the last block: attention over every token, the MLP only where the head reads (prefix)
    x = _zero_last(x, m)
    kw = {"inputs": inputs} if isinstance(last.attn, NetAttention) else {}
    x = x + last.drop_path1(last.ls1(last.attn(last.norm1(x), attn_mask=bias, **kw)))
    x = x[:, : spec.num_prefix_tokens]
    x = x + last.drop_path2(last.ls2(last.mlp(last.norm2(x))))
    return net.forward_head(net.norm(x))


def _zero_last(x: Tensor, m: int) -> Tensor:
    """``x`` with its last token zeroed when it stands for m > 0 dropped patches (DIP's M at a
    block input), else ``x``. In place: ``x`` is the previous block's fresh output (or the
    gathered tokens), needed by nothing else."""
    if m > 0:
        x[:, -1].zero_()
    return x
