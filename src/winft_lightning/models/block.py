"""The transformer block of every network from ``build_vit``, and DIP (SPEC 3).

:class:`NetBlock` is timm's ``Block`` (same parameters, so timm weights load unchanged) whose
forward also takes the call's :class:`~winft_lightning.models.inputs.NetInputs`: it multiplies
the input tokens by the DIP keep mask M (``inputs.token_scale``, M on patch tokens, 1 on
prefix tokens) and hands ``inputs`` to its attention. A block rather than forward-pre-hooks:
``torch.compile`` does not guard on module hooks. The key-mask ablation (``dip="key_mask"``)
needs no block change: :func:`~winft_lightning.models.inputs.net_inputs` folds ``keep`` into
the attention mask.
"""

from __future__ import annotations

from timm.models.vision_transformer import Block
from torch import Tensor

from .attention import NetAttention, WinftBlockOutput
from .inputs import NetInputs

__all__ = ["NetBlock"]


class NetBlock(Block):
    """timm ``Block`` with the call's inputs as an argument.

    ``block(x)`` (timm's call, e.g. :func:`~winft_lightning.core.capture.iter_block_attention`)
    returns ``[B, T, C]``; ``block(x, inputs)`` (the network's own loop) returns
    ``(x, winft)``: ``winft`` the :class:`~.attention.WinftBlockOutput` of a WinfT attention,
    else None."""

    def forward(
        self,
        x: Tensor,
        inputs: NetInputs | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor | tuple[Tensor, WinftBlockOutput | None]:
        if inputs is not None and inputs.token_scale is not None:
            x = x * inputs.token_scale.to(x.dtype)
        kw = {"inputs": inputs} if isinstance(self.attn, NetAttention) else {}
        a = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, **kw)
        winft = None
        if isinstance(a, tuple):
            a, winft = a
        x = x + self.drop_path1(self.ls1(a))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x if inputs is None else (x, winft)
