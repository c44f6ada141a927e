"""Networks: ``build_vit`` (timm ViT with full / AWD / WinfT attention, DIP) and their inputs."""

from .attention import (
    AwdAttention,
    WinftAttention,
    awd_attn_mask,
    awd_block_mask,
    expand_prefix,
    tiled_order,
    winft_logits,
    winft_window,
)
from .context import NetContext, batch_context, clear_batch, get_context, set_batch
from .dip import DipBlock
from .sparse import block_mask_from_dense, flex_kernel_options
from .vit import build_vit, collect_winft_outputs, predicted_window_sum, winft_bce_loss

__all__ = [
    "AwdAttention",
    "DipBlock",
    "NetContext",
    "WinftAttention",
    "awd_attn_mask",
    "awd_block_mask",
    "batch_context",
    "block_mask_from_dense",
    "build_vit",
    "clear_batch",
    "collect_winft_outputs",
    "expand_prefix",
    "flex_kernel_options",
    "get_context",
    "predicted_window_sum",
    "set_batch",
    "tiled_order",
    "winft_bce_loss",
    "winft_logits",
    "winft_window",
]
