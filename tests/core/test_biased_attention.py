"""core.biased_attention: the slope-biased attention's values and gradients are those of the
logits written out by hand (softmax(q k^T / sqrt(d) - slope_h * D) v, autograd through it),
whatever the chunking of its backward; and the local family's layer takes it only where SDPA
would fall back to its math path (a teacher's fit on the CPU), with the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from winft_lightning.core import biased_attention as BA
from winft_lightning.models import build_vit, distance
from winft_lightning.models.distance import grid_distance_tokens

H, T, D = 3, 17, 8  # T = 1 prefix token + a 4 x 4 grid


def _by_hand(q, k, v, slopes, matrix):
    logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 - slopes.view(1, -1, 1, 1) * matrix
    return logits.softmax(-1) @ v


def _inputs(b, dtype=torch.float64):
    g = torch.Generator().manual_seed(b)
    q, k, v = (torch.randn(b, H, T, D, generator=g, dtype=dtype).requires_grad_() for _ in "qkv")
    slopes = (torch.rand(H, generator=g, dtype=dtype) + 0.2).requires_grad_()
    return q, k, v, slopes, grid_distance_tokens((4, 4), 1).to(dtype)


@pytest.mark.parametrize("chunk", [BA.CHUNK_ELEMENTS, 2 * H * T * T])  # one chunk; 2, 2, 1 images
def test_values_and_gradients_are_the_hand_written_attentions(chunk, monkeypatch):
    monkeypatch.setattr(BA, "CHUNK_ELEMENTS", chunk)
    q, k, v, slopes, matrix = _inputs(5)
    d_out = torch.randn(5, H, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    got = BA.slope_biased_attention(q, k, v, slopes, matrix)
    want = _by_hand(q, k, v, slopes, matrix)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(got, (q, k, v, slopes), d_out)
    hand = torch.autograd.grad(want, (q, k, v, slopes), d_out)
    for name, g, h in zip(["q", "k", "v", "slopes"], grads, hand, strict=True):
        torch.testing.assert_close(g, h, atol=1e-9, rtol=1e-9, msg=name)
    assert hand[3].abs().min() > 1e-3  # every slope has a gradient to get right


def test_frozen_slopes_get_no_gradient_and_bad_shapes_are_refused():
    q, k, v, slopes, matrix = _inputs(2)
    out = BA.slope_biased_attention(q, k, v, slopes.detach(), matrix)
    dq, _, _ = torch.autograd.grad(out.sum(), (q, k, v))
    torch.testing.assert_close(
        dq, torch.autograd.grad(_by_hand(q, k, v, slopes.detach(), matrix).sum(), q)[0]
    )
    with pytest.raises(ValueError, match=r"slopes \(2,\).*want \[B, H, T, d\], \[H\], \[T, T\]"):
        BA.slope_biased_attention(q, k, v, slopes[:2], matrix)


def _graph_names(t):
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return {type(f).__name__ for f in seen}


def test_a_local_teacher_step_takes_it_with_the_math_paths_gradients(monkeypatch):
    """A local net's training forward on the CPU runs the slope-biased function (in its autograd
    graph), and every parameter's gradient is the non-fused path's; in eval under no_grad, or
    with the slopes frozen, it is not taken (SDPA's fused path serves those)."""
    torch.manual_seed(0)
    net = build_vit(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                    num_classes=10, attn_bias="distance").train()  # fmt: skip
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    out = net(x)
    assert "_SlopeBiasedAttentionBackward" in _graph_names(out)
    fast = torch.autograd.grad(F.cross_entropy(out, y), list(net.parameters()))
    for blk in net.blocks:
        blk.attn.fused_attn = False
    slow_out = net(x)
    assert "_SlopeBiasedAttentionBackward" not in _graph_names(slow_out)
    slow = torch.autograd.grad(F.cross_entropy(slow_out, y), list(net.parameters()))
    for (name, _), f, s in zip(net.named_parameters(), fast, slow, strict=True):
        torch.testing.assert_close(f, s, atol=1e-5, rtol=1e-4, msg=name)
    calls = []
    monkeypatch.setattr(distance, "slope_biased_attention",
                        lambda *a: calls.append(1) or BA.slope_biased_attention(*a))  # fmt: skip
    for blk in net.blocks:
        blk.attn.fused_attn = True
    net(x)
    assert len(calls) == len(net.blocks)  # the counter sees the path while it is taken
    calls.clear()
    with torch.no_grad():
        net.eval()(x)
    assert not calls  # eval under no_grad: SDPA's fused path
    net.train()
    for blk in net.blocks:
        blk.attn.distance_slope.requires_grad_(False)
    assert "_SlopeBiasedAttentionBackward" not in _graph_names(net(x))
    assert not calls
