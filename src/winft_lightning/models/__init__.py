"""Networks: ``build_vit`` (timm ViT with full / AWD / WinfT attention, DIP), called with the
batch's inputs as arguments (``net(x, windows=..., keep=...)``)."""

from .attention import (
    AwdAttention,
    WinftAttention,
    WinftBlockOutput,
    awd_attn_mask,
    awd_block_mask,
    expand_prefix,
    tiled_order,
    winft_logits,
    winft_window,
)
from .block import NetBlock
from .inputs import NetInputs, NetSpec, net_inputs, net_spec
from .sparse import block_mask_from_dense, flex_kernel_options
from .vit import (
    NetViT,
    NetViTDistilled,
    UnsupportedModel,
    WinftOutput,
    build_vit,
    check_vit_family,
    predicted_window_sum,
    winft_bce_loss,
)

__all__ = [
    "AwdAttention",
    "NetBlock",
    "NetInputs",
    "NetSpec",
    "NetViT",
    "NetViTDistilled",
    "UnsupportedModel",
    "WinftAttention",
    "WinftBlockOutput",
    "WinftOutput",
    "awd_attn_mask",
    "awd_block_mask",
    "block_mask_from_dense",
    "build_vit",
    "check_vit_family",
    "expand_prefix",
    "flex_kernel_options",
    "net_inputs",
    "net_spec",
    "predicted_window_sum",
    "tiled_order",
    "winft_bce_loss",
    "winft_logits",
    "winft_window",
]
