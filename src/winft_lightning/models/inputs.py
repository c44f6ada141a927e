"""What a network is built with (:class:`NetSpec`) and what one call carries (:class:`NetInputs`).

timm passes per-call data as arguments (``Attention.forward(x, attn_mask=None)``); so does
every network from :func:`~winft_lightning.models.build_vit`:
``net(x, windows=..., keep=..., collect_winft=...)``, or ``net(x, inputs)`` with
``inputs = net_inputs(net, windows=..., keep=...)`` built beforehand (outside a
``torch.compile`` region, as the LightningModules do). :func:`net_inputs` builds every derived
tensor (dense mask, flex ``BlockMask``, DIP multiplier) once per batch on the windows' device;
the frozen :class:`NetInputs` then goes down, unchanged, to each block and its attention. No
module keeps any of it after the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from winft_lightning.core.interactions import windows_to_mask

from .sparse import DEFAULT_BLOCK, awd_block_mask, flex_kernel_options

__all__ = ["NetInputs", "NetSpec", "awd_attn_mask", "net_inputs", "net_spec"]

SPEC_ATTR = "net_spec"


@dataclass(frozen=True)
class NetSpec:
    """Build-time configuration of one network (never per batch): patch ``grid``, prefix tokens,
    ``attn`` kind, ``sparse`` (flex) path with its token order ``tile`` and ``block_size`` (see
    :mod:`.sparse`), ``dip`` mode, ``attn_bias`` ("distance": :mod:`.distance`)."""

    grid: tuple[int, int]
    num_prefix_tokens: int
    attn: str = "full"
    sparse: bool = False
    dip: str = "none"
    tile: int = 0
    block_size: int | tuple[int, int] = DEFAULT_BLOCK
    attn_bias: str = "none"

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


@dataclass(frozen=True, eq=False)
class NetInputs:
    """One call's inputs, derived once per batch by :func:`net_inputs` and passed to every block:
    ``attn_mask`` dense ``[B, 1, T, T]`` bool (AWD and/or DIP key mask), ``block_mask`` the same
    as a flex ``BlockMask`` in the sparse token order (sparse path), ``token_scale`` ``[B, T, 1]``
    DIP multiplier (1 on prefix tokens), ``collect`` whether WinfT blocks return their logits
    (with grad), ``w_gt`` ``[B, N, N]`` float32 the WinfT ground truth each WinfT block takes
    its BCE against (eq. 12), ``kept`` ``[B, K]`` long the patches a kept-token forward runs
    (:func:`~winft_lightning.models.dropped.forward_kept`: row-major, ascending, one zero token
    after them standing for the rest), which a distance-biased layer biases at their positions.
    ``NetInputs()``: nothing restricted, nothing collected."""

    attn_mask: Tensor | None = None
    block_mask: object | None = None
    token_scale: Tensor | None = None
    collect: bool = False
    w_gt: Tensor | None = None
    kept: Tensor | None = None


def net_spec(model: nn.Module) -> NetSpec:
    """The :class:`NetSpec` of a network from ``build_vit`` (or its ``torch.compile`` wrapper)."""
    spec = getattr(model, SPEC_ATTR, None)
    if spec is None:
        spec = getattr(getattr(model, "_orig_mod", None), SPEC_ATTR, None)
    if not isinstance(spec, NetSpec):
        raise TypeError(f"{type(model).__name__} has no NetSpec: build it with build_vit")
    return spec


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


def _check(name: str, t: Tensor, spec: NetSpec, last: int | None) -> None:
    want = (spec.num_patches,) if last is None else (spec.num_patches, last)
    if t.dim() != len(want) + 1 or tuple(t.shape[1:]) != want:
        raise ValueError(
            f"{name} must be [B, {', '.join(map(str, want))}] for a {spec.grid[0]}x{spec.grid[1]} "
            f"patch grid, got {tuple(t.shape)}"
        )


def net_inputs(
    model: nn.Module | NetSpec,
    windows: Tensor | None = None,
    keep: Tensor | None = None,
    collect_winft: bool = False,
    w_gt: Tensor | None = None,
) -> NetInputs:
    """One batch's :class:`NetInputs` for ``model`` (a network from ``build_vit`` or its spec).

    windows: ``[B, N, 4]`` AWD windows ``(x_l, y_t, x_r, y_b)`` (required when attn="awd").
    keep: ``[B, N]`` bool DIP mask M (False = dropped patch), e.g. ``interactions.dip_keep``;
    None means no patch dropped. collect_winft: WinfT blocks return ``[B, N, N]`` logits with
    their autograd graph; E_O is always returned. w_gt: ``[B, N, N]`` WinfT ground truth
    (``interactions.responsive_field``, bool or float): each WinfT block returns its BCE
    against it (the network's ``WinftOutput.bce``), with no ``[B, N, N]`` kept per block.
    """
    spec = model if isinstance(model, NetSpec) else net_spec(model)
    if w_gt is not None:
        _check("w_gt", w_gt, spec, spec.num_patches)
        if spec.attn != "winft":
            raise ValueError(f"w_gt given to a model built with attn={spec.attn!r}")
        w_gt = w_gt.to(torch.float32)
    if windows is not None:
        _check("windows", windows, spec, 4)
        if spec.attn != "awd":
            raise ValueError(f"windows given to a model built with attn={spec.attn!r}")
    elif spec.attn == "awd":
        raise ValueError("attn='awd' needs the batch's windows [B, N, 4]")
    if keep is not None:
        _check("keep", keep, spec, None)
        if spec.dip == "none":
            raise ValueError("keep given to a model built without DIP (build_vit(dip=...))")
        keep = keep.to(torch.bool)
        if windows is not None:
            keep = keep.to(windows.device)
    token_scale = None
    key_keep = keep if spec.dip == "key_mask" else None
    if keep is not None and spec.dip == "multiply":
        token_scale = torch.ones(keep.shape[0], spec.num_tokens, 1, device=keep.device)
        token_scale[:, spec.num_prefix_tokens :, 0] = keep.float()
    attn_mask = block_mask = None
    if windows is not None or key_keep is not None:
        if spec.sparse:
            block_mask = awd_block_mask(windows, key_keep, spec)
        else:
            attn_mask = awd_attn_mask(windows, spec.grid, spec.num_prefix_tokens, keep=key_keep)
    return NetInputs(attn_mask, block_mask, token_scale, collect_winft, w_gt)
