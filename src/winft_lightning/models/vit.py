"""``build_vit``: timm VisionTransformer with full, AWD or WinfT attention, optional DIP."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from winft_lightning.core.capture import embed_tokens
from winft_lightning.runtime.checkpoints import checkpoint_file

from .attention import AwdAttention, NetAttention, WinftAttention, WinftBlockOutput, winft_window
from .block import NetBlock
from .distance import DistanceAttention, check_attn_bias
from .inputs import SPEC_ATTR, NetInputs, NetSpec, net_inputs
from .mimetic import INITS, mimetic_init_
from .sparse import DEFAULT_BLOCK, block_sizes
from .weights import create_pretrained, create_with_weights

__all__ = [
    "ATTN_KINDS",
    "DIP_MODES",
    "VIT_MODULES",
    "WINFT_MODES",
    "NetViT",
    "NetViTDistilled",
    "UnsupportedModel",
    "WinftOutput",
    "build_vit",
    "check_vit_family",
    "predicted_window_sum",
    "winft_bce_loss",
]

ATTN_KINDS = ("full", "awd", "winft")
WINFT_MODES = ("multiply", "neg_inf")
DIP_MODES = ("none", "multiply", "key_mask")
# timm modules whose models are VisionTransformer (or DeiT's distilled subclass)
VIT_MODULES = ("vision_transformer", "deit")
SUPPORTED = (
    "timm's ViT family: the VisionTransformer models of timm's vision_transformer and deit "
    "modules (vit_*, deit_*, deit3_*, DeiT's distilled models included), e.g. "
    "vit_base_patch16_224 or deit_tiny_distilled_patch16_224"
)


class UnsupportedModel(ValueError):
    """A timm model outside the ViT family this framework analyzes and trains."""


def check_vit_family(
    model_name: str, option: str = "model_name", error: type[Exception] = UnsupportedModel
) -> None:
    """Refuse ``model_name`` (raise ``error`` naming ``option``) unless it names a model of
    :data:`VIT_MODULES`, before anything is built. ``hf-hub:`` names are checked once built
    (their class comes with the hub)."""
    if model_name.startswith("hf-hub:"):
        return
    if not timm.models.is_model(model_name):
        raise error(f"{option}={model_name} is not a timm model; supported: {SUPPORTED}")
    arch = timm.models.get_arch_name(model_name)
    if not timm.models.is_model_in_modules(arch, VIT_MODULES):
        module = timm.models._registry._model_to_module.get(arch)
        raise error(
            f"{option}={model_name} is a timm {module} model, whose attention this framework "
            f"cannot capture or window; supported: {SUPPORTED}"
        )


class WinftOutput(NamedTuple):
    """What a WinfT network returns: ``logits`` ``[B, classes]``; ``w_logits`` per-block
    ``[B, N, N]`` float32 ``mean_h Q_h K_h^T`` with grad (``w' = sigmoid``), empty unless called
    with ``collect_winft=True``; ``eo`` ``[B]`` float = True entries of W's patch block per image,
    averaged over blocks; ``bce`` the BCE of SPEC 5 (eq. 12, mean over blocks) when called with
    ``w_gt`` (each block takes its own), else None. ``winft_bce_loss(w_logits, w_gt)`` is the
    same loss from the collected logits."""

    logits: Tensor
    w_logits: list[Tensor]
    eo: Tensor
    bce: Tensor | None = None


class NetViT(VisionTransformer):
    """timm's ``VisionTransformer`` whose forward takes the batch's inputs as arguments.

    ``net(x, windows=None, keep=None, collect_winft=False, w_gt=None)``, or ``net(x, inputs)`` with
    ``inputs = net_inputs(net, ...)`` built once per batch. Returns the class logits
    ``[B, classes]``, or a :class:`WinftOutput` for attn="winft". timm's ``attn_mask`` still
    works (``net(x, attn_mask=awd_attn_mask(...))``). ``build_vit`` sets this class on the
    model timm builds (same modules and state dict)."""

    net_spec: NetSpec

    def _features(
        self, x: Tensor, inputs: NetInputs, attn_mask: Tensor | None, is_causal: bool
    ) -> tuple[Tensor, list[WinftBlockOutput]]:
        x = embed_tokens(self, x)
        winft = []
        for blk in self.blocks:
            x, out = blk(x, inputs, attn_mask=attn_mask, is_causal=is_causal)
            if out is not None:
                winft.append(out)
        return self.norm(x), winft

    def forward_features(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        inputs: NetInputs | None = None,
    ) -> Tensor:
        """timm's features ``[B, T, C]``; ``inputs`` from :func:`net_inputs` (WinfT's
        per-block outputs are dropped: call the network for them)."""
        return self._features(x, inputs or NetInputs(), attn_mask, is_causal)[0]

    def forward(
        self,
        x: Tensor,
        inputs: NetInputs | None = None,
        *,
        windows: Tensor | None = None,
        keep: Tensor | None = None,
        collect_winft: bool = False,
        w_gt: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor | WinftOutput:
        given = windows is not None or keep is not None or collect_winft or w_gt is not None
        if inputs is None:
            inputs = net_inputs(self, windows, keep, collect_winft, w_gt) if given else NetInputs()
        elif given:
            raise ValueError("give either inputs or windows/keep/collect_winft/w_gt, not both")
        x, winft = self._features(x, inputs, attn_mask, is_causal)
        logits = self.forward_head(x)
        if self.net_spec.attn != "winft":
            return logits
        w_logits = [out.logits for out in winft if out.logits is not None]
        eo = sum(out.count.float() for out in winft) / len(winft)
        bce = None
        if inputs.w_gt is not None:
            bce = sum(out.bce for out in winft) / len(winft)
        return WinftOutput(logits, w_logits, eo, bce)


class NetViTDistilled(NetViT, VisionTransformerDistilled):
    """DeiT's distilled ViT (class and distillation tokens: 2 prefix tokens; two heads) as a
    :class:`NetViT`. Its logits are the mean of the two heads, timm's own inference output, in
    training too: these recipes have no DeiT distillation teacher, so both heads learn the
    run's loss through that mean."""


NET_CLASSES = {VisionTransformer: NetViT, VisionTransformerDistilled: NetViTDistilled}


def build_vit(
    model_name: str = "vit_base_patch16_224",
    img_size: int = 224,
    patch_size: int = 16,
    num_classes: int = 1000,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    attn: str = "full",
    winft_mode: str = "multiply",
    sparse: bool = False,
    dip: str | None = None,
    checkpoint: str | None = None,
    pretrained: bool = False,
    drop_path_rate: float = 0.0,
    tile: int = 0,
    block_size: int | Sequence[int] = DEFAULT_BLOCK,
    init: str = "default",
    init_options: dict[str, float] | None = None,
    attn_bias: str = "none",
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm ``VisionTransformer`` with ``attn`` in {"full", "awd", "winft"}.

    "full" keeps timm's own ``Attention`` (fused SDPA). "awd" restricts patch rows to the batch's
    windows (dense SDPA mask, or flex block-sparse with ``sparse=True``); "winft" predicts its own
    mask (``winft_mode`` "multiply" = eq. 10, "neg_inf" = true restriction, flex with
    ``sparse=True``). ``dip`` in {None/"none", "multiply" (SPEC 3), "key_mask" (ablation)}.
    Per-batch inputs are arguments: ``net(x, windows=..., keep=...)`` (see :class:`NetViT`).

    ``checkpoint``: a weights file, its format read from its content (a timm/torch state dict,
    a Lightning checkpoint with keys ``net.*``, ``.safetensors``, or a Google ``.npz``; see
    :func:`.weights.create_with_weights`) loaded through timm's pretrained path, so the
    pos-embed is resampled to ``img_size`` and patch embedding to ``patch_size``. The
    classifier head is kept when its size matches ``num_classes`` and dropped (fresh head)
    otherwise. ``pretrained=True``: timm's own weights of ``model_name`` (with its tag, e.g.
    ``vit_base_patch16_224.augreg_in21k``) from the Hugging Face hub/cache instead
    (:func:`.weights.create_pretrained`; offline with ``HF_HUB_OFFLINE=1``).
    embed_dim/depth/num_heads override the named architecture only when given. ``tile`` (token order: 0 row-major with the prefix last,
    -1 timm's order, > 0 square tiles) and ``block_size`` (flex block, int or (q, kv) pair) set
    the sparse path (see :mod:`.sparse`).

    ``init`` (fresh weights only): "default" (timm's) or "mimetic" (:func:`.mimetic.mimetic_init_`
    on top of timm's, ``init_options`` its alpha1/beta1/alpha2/beta2/qk_scale; its generator is
    seeded by one draw of the global RNG, which timm's own init draws from too, so a teacher's
    seed picks its Z). Same modules and state-dict keys either way.

    ``attn_bias``: "none", or "distance" (:class:`.distance.DistanceAttention`: a learnable
    ``-softplus(s_h) * d(i, j)`` on the patch logits, one slope a head; attn "full" or "awd",
    dense). Another architecture: one more state-dict key a block. (Long for its 20 options
    and this reference of them: the body is 22 lines.)
    """
    dip, block_size = _check_options(model_name, attn, winft_mode, sparse, dip, tile, block_size)
    _check_init(init, init_options, checkpoint, pretrained)
    attn_layer = _attn_layer(attn, dip, attn_bias, sparse)
    kwargs = dict(timm_kwargs)
    for name, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
        if value is not None:
            kwargs[name] = value
    kwargs.update(
        img_size=img_size,
        patch_size=patch_size,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        attn_layer=attn_layer,
        block_fn=NetBlock,
    )
    model = _create(model_name, checkpoint, pretrained, **kwargs)
    if init == "mimetic":
        seed = int(torch.randint(2**62, ()))  # the global RNG, as timm's init above
        mimetic_init_(model, **(init_options or {}), generator=torch.Generator().manual_seed(seed))
    spec_of = {"attn": attn, "sparse": sparse, "dip": dip, "tile": tile, "block_size": block_size,
               "attn_bias": attn_bias}  # fmt: skip
    return _as_net(model, model_name, winft_mode, **spec_of)


def _attn_layer(attn: str, dip: str, attn_bias: str, sparse: bool) -> type[nn.Module]:
    """The attention class timm builds every block with: WinfT's; the distance-biased one; AWD's
    where a mask is read (AWD windows, the DIP key mask); else timm's own ``Attention``."""
    if check_attn_bias(attn_bias) == "distance" and (attn == "winft" or sparse):
        raise ValueError(
            "attn_bias='distance' is defined for dense attn 'full'/'awd' (not WinfT, not sparse)"
        )
    if attn == "winft":
        return WinftAttention
    if attn_bias == "distance":
        return DistanceAttention
    return AwdAttention if attn == "awd" or dip == "key_mask" else Attention


def _check_options(
    model_name: str,
    attn: str,
    winft_mode: str,
    sparse: bool,
    dip: str | None,
    tile: int,
    block_size: int | Sequence[int],
) -> tuple[str, int | tuple[int, int]]:
    """:func:`build_vit`'s checks of its options, before anything is built (a ``ValueError``
    naming the option; :class:`UnsupportedModel` for a model outside the ViT family). Returns
    ``dip`` ("none" for None) and ``block_size`` (an int when its q and kv sizes agree)."""
    if attn not in ATTN_KINDS:
        raise ValueError(f"attn must be one of {ATTN_KINDS}, got {attn!r}")
    if winft_mode not in WINFT_MODES:
        raise ValueError(f"winft_mode must be one of {WINFT_MODES}, got {winft_mode!r}")
    dip = dip or "none"
    if dip not in DIP_MODES:
        raise ValueError(f"dip must be one of {DIP_MODES} or None, got {dip!r}")
    if attn == "winft" and dip == "key_mask":
        raise ValueError("dip='key_mask' is defined for attn 'full'/'awd', not 'winft'")
    if sparse and attn == "winft" and winft_mode != "neg_inf":
        raise ValueError("sparse WinfT needs winft_mode='neg_inf' (multiply mode is dense)")
    if sparse and attn == "full" and dip != "key_mask":
        raise ValueError("sparse=True needs a mask: attn 'awd' or 'winft', or dip='key_mask'")
    check_vit_family(model_name)

    block_size = block_sizes(block_size)  # validates
    block_size = block_size[0] if block_size[0] == block_size[1] else block_size
    if tile < -1:
        raise ValueError(f"tile must be -1 (timm order), 0 (row-major) or > 0, got {tile}")
    return dip, block_size


def _check_init(
    init: str, options: dict[str, float] | None, checkpoint: str | None, pretrained: bool
) -> None:
    """:func:`build_vit`'s checks of ``init`` and ``init_options`` (a ``ValueError``)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init != "default" and (checkpoint is not None or pretrained):
        raise ValueError(f"init={init!r} initialises fresh weights: give no checkpoint/pretrained")
    if options and init != "mimetic":
        raise ValueError(f"init_options {dict(options)} need init='mimetic', got {init!r}")


def _create(model_name: str, checkpoint: str | None, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm's ``model_name`` built with ``kwargs``, its weights read from ``checkpoint``, or
    timm's hub weights (``pretrained``), or freshly initialised."""
    if checkpoint is not None and pretrained:
        raise ValueError(
            f"give either checkpoint ({checkpoint}) or pretrained=True (timm's hub weights of "
            f"{model_name}), not both"
        )
    if checkpoint is not None:
        path = checkpoint_file(os.fspath(checkpoint))
        return create_with_weights(model_name, path, **kwargs)
    if pretrained:
        return create_pretrained(model_name, **kwargs)
    return timm.create_model(model_name, pretrained=False, **kwargs)


def _as_net(model: nn.Module, model_name: str, winft_mode: str, **spec: Any) -> nn.Module:
    """``model`` (timm's ViT, or DeiT's distilled one) as its :data:`NET_CLASSES` class, with
    its :class:`NetSpec` (``spec``: attn, sparse, dip, tile, block_size; the grid and prefix
    tokens read from the model) attached to every attention layer of ours."""
    if type(model) not in NET_CLASSES:
        raise UnsupportedModel(f"{model_name} is a {type(model).__name__}; supported: {SUPPORTED}")
    model.__class__ = NET_CLASSES[type(model)]  # a subclass: same modules and state dict
    net_spec = NetSpec(
        grid=tuple(model.patch_embed.grid_size),
        num_prefix_tokens=int(model.num_prefix_tokens),
        **spec,
    )
    setattr(model, SPEC_ATTR, net_spec)
    for block in model.blocks:
        if isinstance(block.attn, NetAttention):
            block.attn.attach(net_spec)
        if spec["attn"] == "winft":
            block.attn.mode = winft_mode
    return model


@torch.no_grad()
def predicted_window_sum(model: nn.Module, images: Tensor) -> Tensor:
    """WinfT's predicted ``sum_l W_l`` (Fig. 10) for ``images`` ``[B, 3, H, W]``: one forward
    with collection on; ``[B, N, N]`` float on the CPU, entries in 0..l."""
    out = model(images, collect_winft=True)
    return sum(winft_window(block).float() for block in out.w_logits).cpu()


def winft_bce_loss(logits: list[Tensor], w_gt: Tensor) -> Tensor:
    """SPEC 5 / eq. 12: BCE between ``w' = sigmoid(logits)`` and the responsive field ``w_gt``
    ``[B, N, N]`` bool (``interactions.responsive_field``), mean over images and the N*N entries,
    then over blocks. logits: ``WinftOutput.w_logits`` of the network's forward."""
    if not logits:
        raise ValueError("no WinfT logits: run the forward with collect_winft=True")
    target = w_gt.to(device=logits[0].device, dtype=torch.float32)
    return sum(F.binary_cross_entropy_with_logits(lg, target) for lg in logits) / len(logits)
