"""DIP (SPEC 3): token multiply at every block input, and the key-mask ablation."""

from __future__ import annotations

import pytest
import torch

from helpers import MODEL_KW, attention_maps
from winft_lightning.core.capture import embed_tokens
from winft_lightning.core.interactions import awd_windows, dip_keep, dip_order
from winft_lightning.models import NetBlock, build_vit, net_inputs
from winft_lightning.models.dropped import forward_kept, supports_forward_kept

KW = MODEL_KW


def _keep(b: int, beta: float) -> torch.Tensor:
    return dip_keep(
        dip_order(torch.rand(b, 16, 16, generator=torch.Generator().manual_seed(3))), beta
    )


def _models(attn: str = "awd", **kw):
    torch.manual_seed(0)
    base = build_vit(attn=attn, **KW).eval()
    dip = build_vit(attn=attn, dip="multiply", **KW, **kw).eval()
    dip.load_state_dict(base.state_dict())
    return base, dip


def test_dropped_tokens_zero_at_every_block():
    _, model = _models("full")
    assert all(isinstance(b, NetBlock) for b in model.blocks)
    keep = _keep(2, 0.25)
    assert (~keep).sum(1).tolist() == [4, 4]
    seen = []

    def grab(block, args):
        seen.append(args[0])

    def grab_inner(block, args):  # timm's Block.forward sees the multiplied tokens at norm1
        seen.append(args[0])

    for b in model.blocks:
        b.register_forward_pre_hook(grab)
        b.norm1.register_forward_pre_hook(grab_inner)
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16), keep=keep)
    assert len(seen) == 4
    for before, inside in zip(seen[0::2], seen[1::2], strict=True):
        assert (inside[:, 1:][~keep] == 0).all()  # dropped patch tokens
        assert torch.equal(inside[:, 1:][keep], before[:, 1:][keep])
        assert torch.equal(inside[:, 0], before[:, 0])  # prefix untouched
        assert (before[:, 1:][~keep] != 0).all()  # block 1 input was refilled by attention


def test_beta_zero_equals_baseline():
    base, model = _models("awd")
    win = awd_windows(torch.rand(2, 16, 16), 0.1, (4, 4))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = base(x, windows=win)
        out = model(x, windows=win, keep=_keep(2, 0.0))
        dropped = model.forward_features(x, inputs=net_inputs(model, win, _keep(2, 0.5)))
        none = model.forward_features(x, inputs=net_inputs(model, win))
    assert torch.equal(out, ref)
    assert not torch.allclose(dropped, none, atol=1e-3)


def test_keep_needs_dip_model():
    base, _ = _models("full")
    with pytest.raises(ValueError, match="DIP"):
        net_inputs(base, keep=_keep(1, 0.25))


def test_key_mask_ablation_removes_dropped_keys():
    torch.manual_seed(0)
    model = build_vit(attn="full", dip="key_mask", **KW).eval()
    keep = _keep(2, 0.25)
    maps = attention_maps(model, torch.randn(2, 3, 16, 16), keep=keep)
    for attn in maps:  # [B, H, T, T]
        assert (attn[:, :, :, 0] > 0).all()  # CLS stays a key of everyone
        for b in range(2):
            dropped = (~keep[b]).nonzero().flatten() + 1  # token indices of D
            cols = attn[b][:, :, dropped]  # [H, T, |D|]
            own = torch.zeros(17, len(dropped), dtype=torch.bool)
            own[dropped, torch.arange(len(dropped))] = True  # a token may still read itself
            assert (cols[:, ~own] == 0).all() and (cols[:, own] > 0).all()
            assert (attn[b][:, :, 1:][:, :, keep[b]] > 0).all()


@pytest.mark.parametrize("model_name", ["vit_base_patch16_224", "deit_base_distilled_patch16_224"])
@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("attn_bias", ["none", "distance"])
def test_kept_token_forward_equals_the_dense_dip_network(model_name, beta, attn_bias):
    """models.dropped.forward_kept (the kept patches' tokens and one zero token carrying
    +log m; the last block's MLP on the prefix tokens only) gives the dense multiply network's
    logits, with one and two prefix tokens, with nothing dropped and with most patches
    dropped, and with a distance bias of its own slope per head and block (the zero token's
    logit then carries the dropped positions' bias); the stem embedded once serves too."""
    torch.manual_seed(0)
    model = build_vit(model_name, dip="multiply", attn_bias=attn_bias, **KW).eval()
    if attn_bias == "distance":
        with torch.no_grad():
            for i, block in enumerate(model.blocks):
                block.attn.distance_slope.copy_(torch.tensor([-1.0, 0.5]) + i)
    gen = torch.Generator().manual_seed(1)
    keep = dip_keep(torch.rand(4, 16, generator=gen).argsort(1), beta)
    x = torch.randn(4, 3, 16, 16, generator=gen)
    with torch.no_grad():
        dense = model(x, keep=keep)
        kept = forward_kept(model, x, keep)
        again = forward_kept(model, x, keep, tokens=embed_tokens(model, x))
    torch.testing.assert_close(kept, dense, atol=1e-5, rtol=0)
    assert torch.equal(again, kept)


def test_kept_token_forward_refuses_what_it_cannot_equal():
    awd = build_vit(attn="awd", dip="multiply", **KW).eval()
    pooled = build_vit(dip="multiply", global_pool="avg", **KW).eval()
    full = build_vit(dip="multiply", **KW).eval()
    assert supports_forward_kept(full)
    assert not supports_forward_kept(awd) and not supports_forward_kept(pooled)
    x, keep = torch.randn(2, 3, 16, 16), _keep(2, 0.25)
    for model in (awd, pooled):
        with pytest.raises(ValueError, match="forward_kept needs"):
            forward_kept(model, x, keep)
    uneven = keep.clone()
    uneven[0, keep[0].nonzero()[0]] = False  # one more patch dropped in the first image
    with pytest.raises(ValueError, match="same kept count"):
        forward_kept(full, x, uneven)
