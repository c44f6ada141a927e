"""Sparse (FlexAttention) path: token order, ``BlockMask`` construction and the flex call.

``flex_attention`` skips the (query block, key block) pairs of its ``BlockMask`` that are fully
masked, so its cost is the number of visited blocks. Three levers set that number and the price
of each block:

Token order (``tile``), chosen by :func:`tiled_order`:
  * ``tile=0`` (default): patches row-major, prefix tokens moved to the end. A window spanning
    rows y_t..y_b is one contiguous key run; CLS is a key of every query, so its block (the last,
    a partial one) is always visited.
  * ``tile=-1``: timm's own order (prefix first, patches row-major): no permutation at all, so no
    gather of q, k, v and the output; CLS sits in the first key block.
  * ``tile>0``: patches grouped in ``tile x tile`` squares, then the prefix.
  Per-token projections commute with the permutation, so only the attention core runs permuted.

Block size (``block_size``, 128 by default, or ``(q, kv)``): smaller blocks follow the windows
more tightly (fewer visited token pairs) but run smaller kernel tiles; below 128 the kernel's
tiles are pinned to fit (:func:`flex_kernel_options`).

Mask building: :func:`awd_block_mask` runs ``torch.compile(create_block_mask)`` on CUDA (one
fused kernel) and, elsewhere, evaluates the window test on all ``B x T x T`` token pairs as one
broadcast reduced to blocks, instead of the eager ``create_block_mask``'s vmap over the
``mask_mod`` (``builder="mask_mod"`` keeps that reference); all give the same ``BlockMask``.
The ``mask_mod`` itself reads one packed word per query and computes the key's coordinates from
its index: the kernel evaluates it on every partial block, element by element. It is built once per batch and shared by every block and
head (``H = None``). On CUDA the flex call is ``torch.compile(flex_attention)`` (eager flex
materialises the scores); on CPU it stays eager, which has no backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

__all__ = [
    "DEFAULT_BLOCK",
    "awd_block_mask",
    "awd_tables",
    "block_mask_from_dense",
    "block_sizes",
    "flex",
    "flex_kernel_options",
    "tiled_order",
]

DEFAULT_BLOCK = 128
IDENTITY = -1  # tile value: timm's token order, no permutation


def block_sizes(block_size: int | Sequence[int]) -> tuple[int, int]:
    """``(q block, kv block)`` of an int or a pair; each a power of two >= 16."""
    if isinstance(block_size, int):
        sizes = (block_size, block_size)
    else:
        sizes = tuple(int(s) for s in block_size)
    if len(sizes) != 2 or any(s < 16 or s & (s - 1) for s in sizes):
        raise ValueError(f"block_size must be a power of two >= 16 or a pair, got {block_size!r}")
    return sizes[0], sizes[1]


def tiled_order(grid: tuple[int, int], num_prefix_tokens: int, tile: int = 0) -> Tensor:
    """Token permutation ``[T]`` long for the sparse path: ``tile=-1`` the identity (timm order);
    ``tile=0`` patches row-major then the prefix tokens; ``tile>0`` patches by (tile row, tile
    column, row, column in tile), then the prefix. ``x[:, perm]`` is the reordered sequence."""
    h, w = grid
    p = num_prefix_tokens
    if tile == IDENTITY:
        return torch.arange(p + h * w)
    if tile < IDENTITY:
        raise ValueError(f"tile must be -1 (timm order), 0 (row-major) or > 0, got {tile}")
    if tile == 0:
        tile = max(h, w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    key = (
        ((ys // tile) * ((w + tile - 1) // tile) + xs // tile) * tile + ys % tile
    ) * tile + xs % tile
    patches = torch.argsort(key.flatten(), stable=True) + p
    return torch.cat((patches, torch.arange(p)))


def _ordered(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, H, nq, nk]`` bool -> (count ``[B, H, nq]``, visited-first indices ``[B, H, nq, nk]``),
    int32, as ``create_block_mask`` orders them."""
    blocks = blocks.to(torch.int32)
    count = blocks.sum(dim=-1, dtype=torch.int32)
    index = torch.argsort(blocks, dim=-1, descending=True, stable=True).to(torch.int32)
    return count.contiguous(), index.contiguous()


def block_mask_from_dense(
    mask: Tensor, mask_mod: Callable, block_size: int | Sequence[int] = DEFAULT_BLOCK
) -> BlockMask:
    """``BlockMask`` of a dense ``[B, T, S]`` bool mask (True = may attend), one mask shared by
    all heads; ``mask_mod`` must compute the same mask (the kernel evaluates it on partial
    blocks). Equals ``create_block_mask(mask_mod, B, None, T, S, BLOCK_SIZE=block_size)``."""
    qb, kb = block_sizes(block_size)
    b, t, s = mask.shape
    padded = F.pad(mask, (0, -s % kb, 0, -t % qb))
    nq, nk = padded.shape[1] // qb, padded.shape[2] // kb
    count = padded.view(b, nq, qb, nk, kb).sum(dim=(2, 4), dtype=torch.int32).unsqueeze(1)
    full = count == qb * kb
    partial = (count > 0) & ~full
    kv_num, kv_index = _ordered(partial)
    full_num, full_index = _ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_index,
        full_num,
        full_index,
        BLOCK_SIZE=(qb, kb),
        mask_mod=mask_mod,
        seq_lengths=(t, s),
    )


def awd_tables(windows: Tensor | None, keep: Tensor | None, ctx) -> dict:
    """Per-token tables of the AWD mask in the sparse token order: ``win`` ``[B, T, 4]`` window
    of the query at each position (prefix queries: the whole grid), ``packed`` ``[B, T]`` int64
    the same window in one word (16 bits each: x_l, x_r, y_t, y_b), ``kx``/``ky`` ``[T]`` key
    coordinates, ``free`` ``[T]`` prefix keys, ``kkeep`` ``[B, T]`` keys not dropped by DIP
    (None without ``keep``); ``order`` ("prefix_last", "timm" or "tiled"), ``grid``, ``p``."""
    ref = windows if windows is not None else keep
    b, device = ref.shape[0], ref.device
    h, w = ctx.grid
    p, t = ctx.num_prefix_tokens, ctx.num_tokens
    perm = tiled_order(ctx.grid, p, ctx.tile).to(device)
    full = torch.tensor([0, 0, w - 1, h - 1], device=device)
    win = full.expand(b, t, 4).clone()
    if windows is not None:
        win[:, p:] = windows.to(device=device, dtype=torch.long)
    win = win[:, perm].contiguous()
    patch = (perm - p).clamp_min(0)
    kkeep = None
    if keep is not None:
        kkeep = torch.ones(b, t, dtype=torch.bool, device=device)
        kkeep[:, p:] = keep.to(device=device, dtype=torch.bool)
        kkeep = kkeep[:, perm].contiguous()
    shifts = torch.tensor([0, 16, 32, 48], device=device)
    order = {0: "prefix_last", IDENTITY: "timm"}.get(ctx.tile, "tiled")
    return {
        "win": win,
        "packed": (win[..., [0, 2, 1, 3]] << shifts).sum(-1),
        "kx": patch % w,
        "ky": patch // w,
        "free": perm < p,  # prefix keys: everyone attends to them
        "kkeep": kkeep,
        "order": order,
        "grid": (h, w),
        "p": p,
    }


def _awd_mask_mod(tab: dict) -> Callable:
    """The AWD ``mask_mod`` the kernel evaluates on partial blocks: one load per query (its
    packed window); in the row-major orders the key's coordinates are arithmetic on its index
    (no load). Inductor loads a mask_mod's tensors once per score element, so each table read
    costs as much as the attention arithmetic around it (measured: bench/flex_probe.py)."""
    packed, kkeep, order = tab["packed"], tab["kkeep"], tab["order"]
    w, p = tab["grid"][1], tab["p"]
    n = tab["grid"][0] * w
    kx_table, ky_table, free_table = tab["kx"], tab["ky"], tab["free"]

    def key_coords(ki):
        if order == "prefix_last":  # patches 0..N-1, then the prefix tokens
            return ki % w, ki // w, ki >= n
        if order == "timm":  # prefix tokens, then patches
            patch = ki - p
            return patch % w, patch // w, ki < p
        return kx_table[ki], ky_table[ki], free_table[ki]

    def mask_mod(bi, hi, qi, ki):
        x, y, free = key_coords(ki)
        word = packed[bi, qi]
        inside = (x >= (word & 0xFFFF)) & (x <= ((word >> 16) & 0xFFFF))
        inside = inside & (y >= ((word >> 32) & 0xFFFF)) & (y <= (word >> 48))
        allowed = inside | free
        if kkeep is not None:
            allowed = allowed & kkeep[bi, ki]
        return allowed | (qi == ki)

    return mask_mod


def _awd_dense(tab: dict) -> Tensor:
    """The ``mask_mod`` of :func:`_awd_mask_mod` on every token pair: ``[B, T, T]`` bool."""
    win = tab["win"].unsqueeze(-1)  # [B, T, 4, 1]
    kx, ky = tab["kx"], tab["ky"]
    inside = (kx >= win[:, :, 0]) & (kx <= win[:, :, 2]) & (ky >= win[:, :, 1])
    inside &= ky <= win[:, :, 3]
    allowed = inside | tab["free"]
    if tab["kkeep"] is not None:
        allowed &= tab["kkeep"].unsqueeze(1)
    t = kx.shape[0]
    return allowed | torch.eye(t, dtype=torch.bool, device=kx.device)


def _compiled_create_block_mask() -> Callable:
    if "create_block_mask" not in _COMPILED:
        _COMPILED["create_block_mask"] = torch.compile(create_block_mask, dynamic=False)
    return _COMPILED["create_block_mask"]


def awd_block_mask(windows: Tensor | None, keep: Tensor | None, ctx, builder: str = "auto"):
    """Flex ``BlockMask`` of the AWD mask (windows, optional DIP key mask ``keep``) in the sparse
    token order of ``ctx`` (``ctx.tile``), blocks of ``ctx.block_size``; one per image, shared by
    the heads. builder: "dense" (one broadcast over the token pairs, reduced to blocks),
    "mask_mod" (eager ``create_block_mask``, the reference), "compiled"
    (``torch.compile(create_block_mask)``: one fused kernel, no ``[B, T, T]`` tensor) or "auto"
    (compiled on CUDA, dense elsewhere). All give the same ``BlockMask``."""
    tab = awd_tables(windows, keep, ctx)
    mask_mod = _awd_mask_mod(tab)
    block_size = getattr(ctx, "block_size", DEFAULT_BLOCK)
    device = tab["win"].device
    if builder == "auto":
        cuda = device.type == "cuda" and not torch.compiler.is_compiling()
        builder = "compiled" if cuda else "dense"
    if builder == "dense":
        return block_mask_from_dense(_awd_dense(tab), mask_mod, block_size)
    if builder not in ("mask_mod", "compiled"):
        raise ValueError(f"builder must be auto, dense, mask_mod or compiled, got {builder!r}")
    make = _compiled_create_block_mask() if builder == "compiled" else create_block_mask
    b, t = tab["win"].shape[0], ctx.num_tokens
    return make(mask_mod, b, None, t, t, device=device, BLOCK_SIZE=block_size)


def flex_kernel_options(block_size: int | Sequence[int]) -> dict[str, int] | None:
    """Kernel tiles that divide blocks smaller than 128 (forward ``BLOCK_M/N``, backward
    ``BLOCK_M1/N1/M2/N2`` with ``N1 % M1 == M2 % N2 == 0``); None (kernel defaults) at 128."""
    qb, kb = block_sizes(block_size)
    if qb >= DEFAULT_BLOCK and kb >= DEFAULT_BLOCK:
        return None
    n1, m2 = min(kb, 128), min(qb, 128)
    return {
        "BLOCK_M": min(qb, 128),
        "BLOCK_N": min(kb, 128),
        "BLOCK_M1": min(qb, n1, 64),
        "BLOCK_N1": n1,
        "BLOCK_M2": m2,
        "BLOCK_N2": min(kb, m2, 64),
    }


_COMPILED: dict[str, Callable] = {}


def _compiled_flex() -> Callable:
    if "flex" not in _COMPILED:
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["flex"]


def flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: BlockMask,
    scale: float,
    kernel_options: dict | None = None,
) -> Tensor:
    """``flex_attention`` on ``[B, H, T, d]``: compiled on CUDA (inside an already compiled
    graph, the plain op, which that graph compiles), eager elsewhere."""
    fn = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        fn = _compiled_flex()
    extra = {"kernel_options": kernel_options} if kernel_options else {}
    return fn(q, k, v, block_mask=block_mask, scale=scale, **extra)
