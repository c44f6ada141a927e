"""The randomisation null's teachers (models/randomise.py): timm's own init redrawn on a copy,
all at once or cascading from the last block; the rest bit-equal, seeded, the global RNG kept,
and the copy still analyzable."""

from __future__ import annotations

import pytest
import torch

from helpers import scrambled, tiny_vit
from winft_lightning.core.analysis import analyze
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.models.randomise import randomised, reinitialised_keys

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher():
    """A 3-block tiny ViT with every weight away from timm's init (so a redrawn weight differs
    from it everywhere, LayerNorm's constants included)."""
    return scrambled(tiny_vit(depth=3), seed=1)


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, bool]:
    sb = b.state_dict()
    return {k: not torch.equal(v, sb[k]) for k, v in a.state_dict().items()}


def test_all_redraws_every_weight_and_keeps_the_architecture(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = randomised(teacher, "all", seed=3)
    assert out is not teacher and type(out) is type(teacher)
    assert list(out.state_dict()) == list(teacher.state_dict())
    assert all(v.shape == teacher.state_dict()[k].shape for k, v in out.state_dict().items())
    assert all(_changed(teacher, out).values())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # untouched
    assert out.training == teacher.training
    # timm's init: weights at std 0.02, LayerNorm at (1, 0), not the scrambled N(0, 0.3^2)
    assert float(out.blocks[0].attn.qkv.weight.detach().std()) == pytest.approx(0.02, rel=0.2)
    assert torch.equal(out.blocks[2].norm1.weight, torch.ones(32))


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_cascade_redraws_the_top_and_the_last_blocks_only(teacher, depth):
    out = randomised(teacher, "cascade", depth, seed=3)
    changed = _changed(teacher, out)
    first = 3 - depth
    want = {k for k in changed if k.startswith(("norm.", "head."))}
    want |= {k for k in changed if k.startswith(tuple(f"blocks.{i}." for i in range(first, 3)))}
    assert {k for k, c in changed.items() if c} == want
    assert set(reinitialised_keys(teacher, "cascade", depth)) == want


def test_the_cascade_is_nested_and_ends_at_all_but_the_embeddings(teacher):
    full = randomised(teacher, "all", seed=3).state_dict()
    one = randomised(teacher, "cascade", 1, seed=3).state_dict()
    three = randomised(teacher, "cascade", 3, seed=3).state_dict()
    assert all(torch.equal(one[k], full[k]) for k in one if k.startswith("blocks.2."))
    embeddings = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
    for k, v in three.items():
        assert torch.equal(v, teacher.state_dict()[k] if k in embeddings else full[k]), k


def test_same_seed_same_weights_and_the_global_rng_is_kept(teacher):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = randomised(teacher, "all", seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    b = randomised(teacher, "all", seed=5).state_dict()
    c = randomised(teacher, "all", seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("mode, depth", [("all", None), ("cascade", 2)])
def test_capture_and_analyze_run_on_the_copy(teacher, mode, depth):
    out = randomised(teacher, mode, depth, seed=0).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = list(iter_block_attention(out, x))
    assert len(maps) == 3 and all(torch.isfinite(m).all() for m in maps)
    res = analyze(out, x, [0.1], (4, 4))
    assert res.u.shape == (2, 16, 16) and res.order.shape == (2, 16)
    assert res.windows[0.1].shape == (2, 16, 4)
    with torch.no_grad():
        assert out(x).shape == (2, 10)


@pytest.mark.parametrize(
    "mode, depth, match",
    [("some", None, "mode"), ("all", 1, "all"), ("cascade", None, "depth"), ("cascade", 4, "0..3")],
)
def test_bad_arguments_are_refused(teacher, mode, depth, match):
    with pytest.raises(ValueError, match=match):
        randomised(teacher, mode, depth)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(TypeError, match="VisionTransformer"):
        randomised(torch.nn.Linear(2, 2), "all")
