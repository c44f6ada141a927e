"""A learnable 2-D distance bias on the attention logits: issue 33's local teacher family.

:class:`DistanceAttention` is :class:`~.attention.AwdAttention` (so windows, DIP key masks and
timm's ``attn_mask`` work as before) whose logit of patch query i and patch key j gets

    - softplus(s_h) * d(i, j)

before the softmax: ``d`` the Euclidean distance between the two patch centres on the grid, in
patches (:func:`~winft_lightning.core.claims.grid_distances`), 0 where the query or the key is a
prefix token; one learnable slope ``s_h`` per head, initialised so that softplus(s_h) =
:data:`SLOPE0`. Locality is then a parameter the teacher keeps or unlearns, not an init that
training washes out (docs/locality_probe.md). A False mask entry is -inf, as timm's bool mask.

The bias goes to timm's own ``Attention.forward`` as a float ``attn_mask`` ``[B or 1, H, T, T]``,
so the fused path (SDPA) and the non-fused one (whose softmax passes through ``attn_drop``, where
:mod:`winft_lightning.core.capture` reads it) see the same logits. Where that mask would need a
gradient on the CPU (a teacher's fit: no other mask), SDPA would leave its fused kernel for the
math path; the layer runs :func:`~winft_lightning.core.biased_attention.slope_biased_attention`
instead, the same values and gradients at about the fused cost. The grid's distances are a
non-persistent buffer, set by :meth:`DistanceAttention.attach` (``build_vit``) or
:func:`set_distances` (a timm model built with this layer, as ``load_teacher`` builds one). The
state dict gains one key a block, ``blocks.<i>.attn.distance_slope``: another architecture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from winft_lightning.core.biased_attention import slope_biased_attention
from winft_lightning.core.claims import grid_distances

from .attention import AwdAttention
from .inputs import NetInputs, NetSpec

__all__ = [
    "ATTN_BIASES",
    "SLOPE0",
    "DistanceAttention",
    "check_attn_bias",
    "grid_distance_tokens",
    "set_distances",
]

ATTN_BIASES = ("none", "distance")
# the initial softplus(s_h): exp(-d) weights; at 8 x 8 a head's mean attention distance starts
# at about a third of uniform attention's (tests/models/test_distance_bias.py measures it)
SLOPE0 = 1.0


def check_attn_bias(
    value: str | None, option: str = "attn_bias", error: type[Exception] = ValueError
) -> str:
    """``value`` (None: "none") if it is one of :data:`ATTN_BIASES`, else ``error`` naming
    ``option``: the one check of the option, wherever it is read (``build_vit``, a teacher
    file's net, ``validate_config``)."""
    value = value or "none"
    if value not in ATTN_BIASES:
        raise error(f"{option}={value!r} is not one of {ATTN_BIASES}")
    return value


def grid_distance_tokens(grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """``[T, T]`` float32, T = prefix + N: the grid distance between patch centres (in patches,
    row-major patches after the prefix tokens, as timm orders them), 0 in every prefix row and
    column."""
    d = grid_distances(grid).to(torch.float32)
    p = int(num_prefix_tokens)
    return F.pad(d, (p, 0, p, 0), value=0.0)


class DistanceAttention(AwdAttention):
    """:class:`~.attention.AwdAttention` with a learnable 2-D distance bias (module docstring).
    Built by timm as ``attn_layer`` (``build_vit(attn_bias="distance")``); the sparse (flex)
    path is refused by ``build_vit``, as are WinfT layers."""

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.distance_slope = nn.Parameter(torch.empty(self.num_heads))
        self.register_buffer("distance", None, persistent=False)
        self.prefix = 0  # the grid's prefix tokens (set_grid)
        self.init_weights()

    def init_weights(self) -> None:
        """softplus(s_h) = :data:`SLOPE0` for every head (timm's ``init_weights`` calls this,
        so a re-initialised teacher, :mod:`.randomise`, gets it again)."""
        with torch.no_grad():
            self.distance_slope.fill_(math.log(math.expm1(SLOPE0)))

    def attach(self, spec: NetSpec) -> None:
        super().attach(spec)
        self.set_grid(spec.grid, spec.num_prefix_tokens)

    def set_grid(self, grid: tuple[int, int], num_prefix_tokens: int) -> None:
        """The ``[T, T]`` distances of this grid, on the slopes' device."""
        self.distance = grid_distance_tokens(grid, num_prefix_tokens).to(self.distance_slope.device)
        self.prefix = int(num_prefix_tokens)

    def _slopes(self) -> Tensor:
        """``[1, H, 1, 1]`` float32 softplus(s_h), once the grid is set."""
        if self.distance is None:
            raise RuntimeError(
                "DistanceAttention has no grid: build it with build_vit(attn_bias='distance') or "
                "call models.distance.set_distances(model)"
            )
        return F.softplus(self.distance_slope.float()).view(1, -1, 1, 1)

    def logit_bias(self, dtype: torch.dtype) -> Tensor:
        """``[1, H, T, T]``: ``-softplus(s_h) * d`` in ``dtype``."""
        return (-self._slopes() * self.distance).to(dtype)

    def kept_bias(self, kept: Tensor, dtype: torch.dtype) -> Tensor:
        """``[B, H, T', T']`` for the kept-token forward (:mod:`.dropped`; T' = prefix + K + 1
        when a patch is dropped, else prefix + N): ``-softplus(s_h) * d`` between the kept
        patches at their grid positions, and on the one zero token's column, which stands for
        the m dropped patches (all the same key and value), ``log mean_j exp(-softplus(s_h) *
        d(i, j))`` over the dropped j (so that with the forward's ``+log m`` the softmax is
        the dense one's; 0 in prefix rows). kept ``[B, K]``: ascending patch indices."""
        slope = self._slopes()
        p = self.prefix
        d = self.distance[p:, p:]  # [N, N]
        b, k = kept.shape
        n = d.shape[0]
        t = p + k + (1 if k < n else 0)
        out = torch.zeros(b, self.num_heads, t, t, device=d.device)
        out[:, :, p : p + k, p : p + k] = -slope * d[kept[:, :, None], kept[:, None, :]][:, None]
        if k < n:
            rest = torch.ones(b, n, dtype=torch.bool, device=d.device)
            rest[torch.arange(b, device=d.device)[:, None], kept] = False
            dropped = rest.nonzero()[:, 1].view(b, n - k)
            far = -slope * d[kept[:, :, None], dropped[:, None, :]][:, None]  # [B, H, K, m]
            out[:, :, p : p + k, -1] = torch.logsumexp(far, dim=-1) - math.log(n - k)
        return out.to(dtype)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        inputs: NetInputs | None = None,
    ) -> Tensor:
        """As :class:`~.attention.AwdAttention`'s; where the slopes are being trained on the CPU
        with no other mask (a teacher's fit), :func:`~winft_lightning.core.biased_attention.
        slope_biased_attention`: the same values and gradients at the fused kernel's cost."""
        if self._slopes_train_fused(x, attn_mask, is_causal, inputs):
            q, k, v = self._qkv(x)
            o = slope_biased_attention(q, k, v, self._slopes().view(-1), self.distance)
            return self._out(o, x)
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal, inputs=inputs)

    def _slopes_train_fused(
        self, x: Tensor, attn_mask: Tensor | None, is_causal: bool, inputs: NetInputs | None
    ) -> bool:
        """Whether this call is a dense fused one on the CPU whose slopes need a gradient: the
        case where SDPA would fall back to its math path (no windows, DIP tokens, dropout,
        autocast or causal mask)."""
        plain = inputs is None or (
            inputs.attn_mask is None and inputs.block_mask is None and inputs.kept is None
        )
        spec = self.spec
        return (
            plain
            and attn_mask is None
            and not is_causal
            and (spec is None or spec.attn != "awd")
            and self.fused_attn
            and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and not (self.training and self.attn_drop.p > 0)
            and torch.is_grad_enabled()
            and self.distance_slope.requires_grad
            and self.distance is not None
            and self.distance.shape[-1] == x.shape[1]
        )

    def _logit_mask(self, attn_mask: Tensor | None, x: Tensor, inputs: NetInputs | None) -> Tensor:
        """The bias (at the kept patches' positions when ``inputs.kept``), with ``attn_mask``
        folded in (bool: False -> -inf; float: added). Its dtype is the logits': autocast's
        where it is on, else the input's."""
        kind = x.device.type
        on = torch.is_autocast_enabled(kind)
        dtype = torch.get_autocast_dtype(kind) if on else x.dtype
        kept = inputs.kept if inputs is not None else None
        bias = self.logit_bias(dtype) if kept is None else self.kept_bias(kept, dtype)
        if bias.shape[-1] != x.shape[1]:
            raise ValueError(
                f"DistanceAttention: {x.shape[1]} tokens, but its grid has {bias.shape[-1]}"
            )
        if attn_mask is None:
            return bias
        if attn_mask.dtype == torch.bool:
            return bias.masked_fill(~attn_mask, float("-inf"))
        return bias + attn_mask


def set_distances(model: nn.Module) -> nn.Module:
    """Give every :class:`DistanceAttention` of the timm ViT ``model`` its grid's distances
    (the model's patch grid and prefix tokens); returns ``model``."""
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    prefix = int(model.num_prefix_tokens)
    for module in model.modules():
        if isinstance(module, DistanceAttention):
            module.set_grid(grid, prefix)
    return model
