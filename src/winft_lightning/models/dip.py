"""DIP (SPEC 3): patch tokens multiplied by the keep mask M at the input of every block.

:class:`DipBlock` is timm's ``Block`` with that multiplication in front, passed to timm as
``block_fn`` by ``build_vit(dip="multiply")``. It reads the batch's ``[B, T, 1]`` multiplier
(M on patch tokens, 1 on prefix tokens) from the network's
:class:`~winft_lightning.models.context.NetContext`, set by ``set_batch(net, keep=...)``; without
one it is timm's block. A block subclass rather than forward-pre-hooks: ``torch.compile`` does not
guard on module hooks (``skip_nnmodule_hook_guards``), so a graph traced for a hook-less ViT of the
same shape would be reused for a hooked one and DIP silently skipped. The key-mask ablation
(``dip="key_mask"``) needs no block change: the context folds ``keep`` into the attention mask.
"""

from __future__ import annotations

from timm.models.vision_transformer import Block
from torch import Tensor

from .context import NetContext

__all__ = ["DipBlock"]


class DipBlock(Block):
    """timm ``Block`` whose input tokens ``[B, T, C]`` are first multiplied by ``ctx.token_scale``."""

    ctx: NetContext | None = None

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        if self.ctx is not None and self.ctx.token_scale is not None:
            x = x * self.ctx.token_scale.to(x.dtype)
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
