"""WinfT attention (SPEC 5, eq. 8-10, 12): hand inputs and naive references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import MODEL_KW, attention_maps
from winft_lightning.models import (
    NetInputs,
    build_vit,
    expand_prefix,
    winft_bce_loss,
    winft_logits,
    winft_window,
)

KW = MODEL_KW


def _model(mode: str = "multiply", **kw):
    torch.manual_seed(0)
    return build_vit(attn="winft", winft_mode=mode, **dict(KW, **kw)).eval()


def test_window_threshold_on_hand_inputs():
    # B=1, 2 heads, d=1, tokens: CLS + 3 patches. mean_h L_h[i, j] = (q_i . k_j) / 2.
    q = torch.tensor([[9.0, 9.0], [2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]])  # [T, H]
    k = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [-2.0, -2.0]])
    q, k = q.T[None, :, :, None], k.T[None, :, :, None]  # [1, H, T, 1]
    logits = winft_logits(q, k, num_prefix_tokens=1)
    expect = torch.tensor([[1.0, 0.0, -2.0], [0.0, 1.0, -2.0], [-1.0, 0.0, 2.0]])
    assert torch.equal(logits[0], expect)
    # sigmoid rows: [.73 .5 .12] mean .45; [.5 .73 .12] mean .45; [.27 .5 .88] mean .55
    w = winft_window(logits)
    assert w[0].tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    full = expand_prefix(w, 1)[0]
    assert full[0].all() and full[:, 0].all() and torch.equal(full[1:, 1:], w[0])


def test_window_threshold_is_on_sigmoid_strict():
    # logit mean 4 would keep only the 20; the sigmoid mean (~0.6) keeps the 1s too
    w = winft_window(torch.tensor([[[20.0, 1.0, 1.0, -1.0, -1.0]]]))
    assert w.tolist() == [[[True, True, True, False, False]]]
    assert not winft_window(torch.zeros(1, 1, 4)).any()  # equal to the mean: strict >


def test_one_matmul_equals_mean_of_heads():
    q, k = torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, 8)
    per_head = torch.einsum("bhid,bhjd->bhij", q, k)[:, :, 1:, 1:].mean(1)
    torch.testing.assert_close(winft_logits(q, k, 1), per_head)


def _naive_eq10(attn, x: torch.Tensor, neg_inf: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, per head loops: returns (output [B, T, C], W [B, N, N])."""
    b, t, _ = x.shape
    heads, d = attn.num_heads, attn.head_dim
    out, ws = torch.empty_like(x), []
    for i in range(b):
        q, k, v = attn.qkv(x[i]).view(t, 3, heads, d).unbind(1)
        ls = [q[:, h] @ k[:, h].T for h in range(heads)]
        wp = torch.sigmoid(sum(ls)[1:, 1:] / heads)
        w = torch.ones(t, t, dtype=torch.bool)
        for r in range(t - 1):
            w[r + 1, 1:] = wp[r] > wp[r].mean()
        ws.append(w[1:, 1:])
        hs = []
        for h in range(heads):
            s = ls[h] / math.sqrt(d)
            s = s.masked_fill(~w, float("-inf")) if neg_inf else s * w
            hs.append(s.softmax(-1) @ v[:, h])
        out[i] = attn.proj(torch.cat(hs, -1))
    return out, torch.stack(ws)


@pytest.mark.parametrize("mode", ["multiply", "neg_inf"])
def test_block_matches_naive_eq10(mode):
    attn = _model(mode).blocks[0].attn
    x = torch.randn(3, 17, 32) * 3
    with torch.no_grad():
        out, winft = attn(x, inputs=NetInputs())
        ref, w = _naive_eq10(attn, x, neg_inf=mode == "neg_inf")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(attn(x), out)  # timm's call: the output alone
    assert torch.equal(winft.count, w.flatten(1).sum(1)) and winft.logits is None
    assert 0 < w.sum() < w.numel()


def test_neg_inf_zero_outside_window():
    model = _model("neg_inf")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        w_logits = model(x, collect_winft=True).w_logits
    maps = attention_maps(model, x)
    assert len(maps) == len(w_logits) == 2
    for attn, logits in zip(maps, w_logits, strict=True):
        w = expand_prefix(winft_window(logits), 1)
        w = w.unsqueeze(1).expand_as(attn)
        assert (attn.masked_select(~w) == 0).all()
        assert (attn.masked_select(w) > 0).all()
        assert (~w).any()


def test_multiply_mode_is_not_a_restriction():
    model = _model("multiply")
    x = torch.randn(2, 3, 16, 16)
    maps = attention_maps(model, x, collect_winft=True)
    assert all((a > 0).all() for a in maps)  # eq. 10: masked logits are 0, not -inf


def test_collect_outputs_and_loss():
    model = _model()
    model.train()
    x = torch.randn(2, 3, 16, 16)
    out = model(x, collect_winft=True)
    logits, eo = out.w_logits, out.eo
    assert out.bce is None  # no w_gt given
    assert len(logits) == 2 and logits[0].shape == (2, 16, 16) and logits[0].requires_grad
    counts = [winft_window(lg).flatten(1).sum(1).float() for lg in logits]
    torch.testing.assert_close(eo, (counts[0] + counts[1]) / 2)
    gt = torch.rand(2, 16, 16) > 0.5
    loss = winft_bce_loss(logits, gt)
    ref = sum(F.binary_cross_entropy(torch.sigmoid(lg), gt.float()) for lg in logits) / 2
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        out2 = model(x)  # no collect flag: E_O only
    assert out2.w_logits == [] and torch.equal(out2.eo, eo)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_neg_inf_sparse_matches_dense_forward():
    kw = dict(img_size=64, tile=4)  # T = 257: three flex blocks
    dense = _model("neg_inf", **kw)
    sparse = build_vit(attn="winft", winft_mode="neg_inf", sparse=True, **dict(KW, **kw)).eval()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = dense.forward_features(x)
        b = sparse.forward_features(x)
        eo_dense, eo_sparse = dense(x).eo, sparse(x).eo
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert torch.equal(eo_dense, eo_sparse)


def test_sparse_multiply_rejected():
    with pytest.raises(ValueError, match="neg_inf"):
        build_vit(attn="winft", sparse=True, **KW)
