"""WinfT's fused attention core (``core.winft``) against the code it replaced.

The reference is ``WinftAttention.forward`` as it was before the core (commit ae8099f), kept
here verbatim: one ``Q K^T`` matmul for the logits and another for the attention, the
``[B, T, T]`` window expanded, the per-block logits returned and the BCE taken after the
forward (``winft_bce_loss``). Tiny real networks from ``build_vit``, float32: the class logits,
E_O, the loss and every parameter's gradient agree to 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from helpers import MODEL_KW
from winft_lightning.core.interactions import awd_windows, dip_order, responsive_field
from winft_lightning.models import (
    NetInputs,
    WinftAttention,
    WinftBlockOutput,
    build_vit,
    expand_prefix,
    net_inputs,
    winft_bce_loss,
    winft_logits,
    winft_window,
)

MODES = ("multiply", "neg_inf")
GEOMETRIES = {  # MODEL_KW (N = 16, 2 heads of 16) and N = 64 with 3 heads of 16, depth 3
    "n16": MODEL_KW,
    "n64": dict(MODEL_KW, img_size=32, embed_dim=48, num_heads=3, depth=3),
}
TOL = 1e-6


class PreChangeWinftAttention(WinftAttention):
    """``WinftAttention.forward`` of ae8099f, the dense path (fused SDPA for "neg_inf")."""

    def forward(self, x, attn_mask=None, is_causal=False, inputs=None):
        p = self.spec.num_prefix_tokens
        q, k, v = self._qkv(x)
        logits = winft_logits(q, k, p)
        w = winft_window(logits)
        count = w.flatten(1).sum(dim=1)
        w = expand_prefix(w, p)  # [B, T, T]
        if self.mode == "multiply":
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = (attn * w.unsqueeze(1)).softmax(dim=-1)
            o = self.attn_drop(attn) @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=w.unsqueeze(1))
        out = self._out(o, x)
        if inputs is None:
            return out
        return out, WinftBlockOutput(logits if inputs.collect else None, count)


def _pair(mode: str, kw: dict):
    """(network with the fused core, the same weights with the pre-change attention)."""
    torch.manual_seed(0)
    new = build_vit(attn="winft", winft_mode=mode, **kw).train()
    ref = build_vit(attn="winft", winft_mode=mode, **kw).train()
    ref.load_state_dict(new.state_dict())
    for block in ref.blocks:
        block.attn.__class__ = PreChangeWinftAttention
    return new, ref


def _batch(kw: dict, b: int = 3):
    """images, labels and the ground truth w_gt (teacher-like windows, DIP beta 0.25)."""
    g = torch.Generator().manual_seed(1)
    side = kw["img_size"] // kw["patch_size"]
    n = side * side
    u = torch.rand(b, n, n, generator=g)
    w_gt = responsive_field(awd_windows(u, 0.2, (side, side)), dip_order(u), 0.25, (side, side))
    x = torch.randn(b, 3, kw["img_size"], kw["img_size"], generator=g) * 2
    return x, torch.randint(0, kw["num_classes"], (b,), generator=g), w_gt


def _grads(net) -> dict[str, Tensor]:
    return {name: p.grad for name, p in net.named_parameters()}


def _diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference."""
    return float((a.detach() - b.detach()).abs().max())


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(_diff(a[k], b[k]) for k in a)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("mode", MODES)
def test_fused_step_matches_pre_change_code(mode, geometry):
    """The module's path: each block takes its BCE against w_gt inside the forward."""
    kw = GEOMETRIES[geometry]
    new, ref = _pair(mode, kw)
    x, y, w_gt = _batch(kw)
    out = new(x, w_gt=w_gt)
    loss = F.cross_entropy(out.logits, y) + out.bce
    loss.backward()
    r = ref(x, collect_winft=True)
    ref_loss = F.cross_entropy(r.logits, y) + winft_bce_loss(r.w_logits, w_gt)
    ref_loss.backward()
    assert out.w_logits == []  # nothing collected: the BCE came from the blocks
    assert _diff(out.logits, r.logits) <= TOL
    assert torch.equal(out.eo, r.eo) and 0 < float(r.eo.min()) < (x.shape[-1] // 4) ** 4
    assert _diff(loss, ref_loss) <= TOL
    grads, ref_grads = _grads(new), _grads(ref)
    assert all(g is not None for g in grads.values())
    assert _max_diff(grads, ref_grads) <= TOL
    assert float(ref_grads["blocks.0.attn.qkv.weight"].abs().max()) > 1e-3  # not vacuous


@pytest.mark.parametrize("mode", MODES)
def test_fused_collected_logits_match_pre_change_code(mode):
    """``collect_winft=True``: the per-block logits, and the gradient of a BCE taken on them
    after the forward, as before (the fused function's logits are differentiable too)."""
    kw = GEOMETRIES["n64"]
    new, ref = _pair(mode, kw)
    x, y, w_gt = _batch(kw)
    out, r = new(x, collect_winft=True), ref(x, collect_winft=True)
    assert len(out.w_logits) == len(r.w_logits) == kw["depth"]
    for a, b in zip(out.w_logits, r.w_logits, strict=True):
        assert a.dtype == torch.float32 and _diff(a, b) <= TOL
    for o in (out, r):
        (F.cross_entropy(o.logits, y) + 0.5 * winft_bce_loss(o.w_logits, w_gt)).backward()
    assert _max_diff(_grads(new), _grads(ref)) <= TOL


def _saved(net, x, **call) -> list[Tensor]:
    """Every tensor autograd keeps for the backward of ``net(x, **call)``."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, **call)
    return saved


@pytest.mark.parametrize("mode", MODES)
def test_fused_keeps_no_square_float_for_the_backward(mode):
    """The memory lever: of ``[.., T, T]`` and ``[.., N, N]`` tensors autograd keeps per block
    only the bool W, and the batch's one float w_gt shared by the blocks ("multiply"): no
    scores, probabilities, logits or float mask. The pre-change code kept several per block."""
    kw = GEOMETRIES["n64"]
    new, ref = _pair(mode, kw)
    x, _, w_gt = _batch(kw)
    n = (kw["img_size"] // kw["patch_size"]) ** 2

    def square(saved: list[Tensor], floating: bool) -> list[tuple]:
        """(storage, shape) of the saved square tensors, float or bool."""
        return sorted({
            (s.untyped_storage().data_ptr(), tuple(s.shape)) for s in saved
            if s.dim() >= 2 and s.shape[-2:] in ((n, n), (n + 1, n + 1))
            and s.is_floating_point() == floating
        })  # fmt: skip

    floats = square(_saved(new, x, w_gt=w_gt), floating=True)
    bools = square(_saved(new, x, w_gt=w_gt), floating=False)
    assert len(bools) == kw["depth"]  # W
    assert [shape for _, shape in floats] == ([(3, n, n)] if mode == "multiply" else [])
    ref_floats = square(_saved(ref, x, collect_winft=True), floating=True)
    assert len(ref_floats) >= len(floats) + kw["depth"]


def test_fused_window_and_count_as_the_reference_functions():
    """The fused W is ``winft_window`` of the returned logits, E_O its True count."""
    kw = GEOMETRIES["n64"]
    net, _ = _pair("multiply", kw)
    attn = net.blocks[0].attn
    tokens = torch.randn(2, 65, kw["embed_dim"])
    with torch.no_grad():
        _, block = attn(tokens, inputs=NetInputs(collect=True))
    assert torch.equal(block.count, winft_window(block.logits).flatten(1).sum(1))
    assert block.bce is None


def test_unfused_fallbacks_give_the_same_loss():
    """Attention capture (``fused_attn`` off) and attention dropout run the plain-op layer;
    with dropout at p=0 in eval that layer and the fused core agree."""
    kw = GEOMETRIES["n16"]
    torch.manual_seed(0)
    net = build_vit(attn="winft", attn_drop_rate=0.1, **kw)
    x, _, w_gt = _batch(kw)
    net.train()
    dropped = net(x, w_gt=w_gt)  # attention dropout: the unfused layer, still with its BCE
    assert dropped.bce is not None and torch.isfinite(dropped.bce)
    net.eval()
    with torch.no_grad():
        fused = net(x, w_gt=w_gt)
        for block in net.blocks:
            block.attn.fused_attn = False
        plain = net(x, w_gt=w_gt)
    assert _diff(fused.logits, plain.logits) <= TOL
    assert _diff(fused.bce, plain.bce) <= TOL and torch.equal(fused.eo, plain.eo)


def test_w_gt_is_checked():
    kw = GEOMETRIES["n16"]
    net = build_vit(attn="winft", **kw)
    with pytest.raises(ValueError, match="w_gt must be"):
        net_inputs(net, w_gt=torch.zeros(2, 16, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="w_gt given to a model built with attn='full'"):
        net_inputs(build_vit(**kw), w_gt=torch.zeros(2, 16, 16, dtype=torch.bool))
    assert net_inputs(net, w_gt=torch.ones(2, 16, 16, dtype=torch.bool)).w_gt.dtype == torch.float32


def test_fused_runs_under_cpu_autocast():
    """bf16 autocast: matmuls in bf16, the logits and BCE in float32, gradients in the
    parameters' dtype."""
    kw = GEOMETRIES["n16"]
    new, _ = _pair("multiply", kw)
    x, y, w_gt = _batch(kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = new(x, w_gt=w_gt, collect_winft=True)
        loss = F.cross_entropy(out.logits.float(), y) + out.bce
    assert out.bce.dtype == torch.float32 and out.w_logits[0].dtype == torch.float32
    loss.backward()
    grad = new.blocks[0].attn.qkv.weight.grad
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().max() > 0
