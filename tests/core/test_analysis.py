"""The one analysis API (analysis.analyze -> Analysis) on a real tiny timm ViT, against the
separate passes it replaces; the one analyzed view shared by the masks and the figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import helpers
from naive import naive_rollout
from winft_lightning.core import interactions as ia
from winft_lightning.core.analysis import Analysis, analyze, default_patches
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.data.loading import SampleDecoder
from winft_lightning.stages import visualize as V

NET = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
GRID = (4, 4)
N = 16


def test_rollout_streams_from_capture():
    model, x = helpers.tiny_vit(**NET), torch.randn(2, 3, 32, 32)
    got = ia.attention_rollout(iter_block_attention(model, x, patches_only=False))
    full = list(iter_block_attention(model, x, patches_only=False))
    torch.testing.assert_close(got.double(), naive_rollout(full, 1), rtol=1e-5, atol=1e-7)


def test_analyze_equals_separate_passes():
    model, x, patches = helpers.tiny_vit(**NET), torch.randn(2, 3, 32, 32), [0, 5, 15]
    res = analyze(model, x, [0.1, 0.3], GRID, patches=patches, rollout=True)
    u = ia.uncertainty_map(iter_block_attention(model, x))
    torch.testing.assert_close(res.u, u)
    blocks = list(iter_block_attention(model, x))
    want = torch.stack([a[:, :, patches, :].mean(1) for a in blocks], dim=1)
    assert res.rows.shape == (2, 2, 3, N) and res.patches == patches
    torch.testing.assert_close(res.rows, want)
    torch.testing.assert_close(
        res.rollout, ia.attention_rollout(iter_block_attention(model, x, patches_only=False))
    )
    assert list(res.windows) == [0.1, 0.3]
    for a in (0.1, 0.3):
        assert torch.equal(res.windows[a], ia.awd_windows(u, a, GRID))
    assert torch.equal(res.order, ia.dip_order(u))
    assert torch.equal(res.column_variance(), ia.column_variance(u))
    # an alpha that was not analyzed comes from U
    want_field = ia.responsive_field(ia.awd_windows(u, 0.2, GRID), ia.dip_order(u), 0.25, GRID)
    assert torch.equal(res.field(0.2, 0.25), want_field)
    assert torch.equal(
        res.field(0.1, 0.0), ia.windows_to_mask(res.windows[0.1], GRID) | torch.eye(N, dtype=bool)
    )


def test_analyze_keeps_each_heads_rows_when_asked():
    model, x, patches = helpers.tiny_vit(**NET), torch.randn(2, 3, 32, 32), [3, 9]
    res = analyze(model, x, patches=patches, heads=True)
    want = torch.stack([a[:, :, patches, :] for a in iter_block_attention(model, x)], dim=1)
    assert res.head_rows.shape == (2, 2, 2, 2, N)  # [B, l, k, n, N]
    torch.testing.assert_close(res.head_rows, want)
    torch.testing.assert_close(res.head_rows.mean(dim=2), res.rows)
    assert analyze(model, x, patches=patches).head_rows is None


def test_analyze_defaults_and_errors():
    model, x = helpers.tiny_vit(**NET), torch.randn(3, 3, 32, 32)
    res = analyze(model, x)
    assert res.grid == GRID and res.windows == {} and res.rows is None and res.rollout is None
    assert res.u.shape == (3, N, N) and res.order.shape == (3, N)
    assert sorted(res.order[0].tolist()) == list(range(N))
    moved = res.cpu()
    assert moved.u.device.type == "cpu" and torch.equal(moved.order, res.order)
    with pytest.raises(ValueError, match="outside"):
        analyze(model, x, patches=[16])
    with pytest.raises(ValueError, match=r"grid \(2, 4\) has 8"):
        analyze(model, x, [0.1], (2, 4))


def test_analysis_from_stored_masks():
    """The callback's case: windows and order read from a mask shard, no U."""
    u = ia.uncertainty_map([torch.rand(2, 2, N, N).softmax(-1) for _ in range(3)])
    wins, order = ia.awd_windows(u, 0.1, GRID), ia.dip_order(u)
    masks = Analysis(GRID, windows={0.1: wins}, order=order)
    assert torch.equal(masks.field(0.1, 0.25), ia.responsive_field(wins, order, 0.25, GRID))
    with pytest.raises(KeyError, match=r"alpha=0\.5"):
        masks.window(0.5)
    with pytest.raises(ValueError, match="needs U"):
        masks.column_variance()
    with pytest.raises(ValueError, match="DIP order"):
        Analysis(GRID, windows={0.1: wins}, order=None).field(0.1, 0.0)


def test_default_patches_spread_and_unique():
    assert default_patches((4, 4)) == [10, 5, 7, 14]
    assert default_patches((1, 1)) == [0]
    assert all(0 <= p < 24 for p in default_patches((4, 6)))


def test_visualize_analyzes_the_view_the_masks_are_made_on(tmp_path):
    """visualize.load_image is the eval view of the shard decoder (analyze's input) to the
    last bit: same resize (bilinear, antialiased), same centre crop."""
    rgb = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    decoder = SampleDecoder(img_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=2)
    sample = {"png": buf.getvalue(), "cls": b"1"}
    got = decoder({"__key__": "k", "__shard__": "s", "__seed__": 0, "members": sample})
    shown = V.load_image(tmp_path / "a.png", 32)
    assert shown.shape == (3, 32, 32)
    assert torch.equal(shown, got["image"])
    # the bundled photos go through the same view
    assert torch.equal(V.square_view(rgb, 32), shown)


@pytest.mark.parametrize("family", ["vit", "winft"])
def test_run_figure_callback_draws_the_analysis(family):
    """The figure callback's drawings of real tiny modules: a full-attention model's own U
    (analyze), and a WinfT model's batch masks with its predicted W beside the fields."""
    from matplotlib.colorbar import Colorbar

    from winft_lightning.lit.callbacks import interaction_figures
    from winft_lightning.lit.modules import MODULES

    net = dict(model_name="vit_tiny_patch16_224", **NET)
    torch.manual_seed(0)
    module = MODULES[family](net=net, **({"alpha": 0.1, "beta": 0.25} if family == "winft" else {}))
    module.eval()
    x = torch.randn(2, 3, 32, 32)
    teacher = analyze(helpers.tiny_vit(**NET), x, [0.1])
    batch = {"image": x, "label": torch.zeros(2, dtype=torch.long)}
    if family == "winft":
        batch |= {"windows": teacher.windows[0.1], "dip_order": teacher.order}
    figs = interaction_figures(module, batch)
    if family == "vit":
        assert sorted(figs) == ["img0_uncertainty_rows", "img1_uncertainty_rows"]
        fig = figs["img1_uncertainty_rows"]
        panels = [ax for ax in fig.axes if not isinstance(getattr(ax, "_colorbar", None), Colorbar)]
        u = analyze(module.net, x).u
        for ax, p in zip(panels, default_patches(GRID), strict=True):
            np.testing.assert_allclose(ax.get_images()[-1].get_array(), u[1, p].view(GRID))
        return
    assert sorted(figs) == [
        f"img{i}_{k}" for i in range(2) for k in ("responsive_field", "windows")
    ]
    field = teacher.field(0.1, 0.25)
    fig = figs["img0_responsive_field"]
    shown = fig.axes[1].get_images()[-1].get_array()  # first patch's S_p
    want = field[0, default_patches(GRID)[0]].view(GRID).numpy()
    np.testing.assert_array_equal(~np.ma.getmaskarray(shown), want)


def test_library_call_on_a_users_own_timm_model():
    """``from winft_lightning import analyze`` on a model straight from timm (train mode, the
    default alphas): the core call's U, windows and order, and the fields from them."""
    import subprocess
    import sys

    import timm
    from omegaconf import OmegaConf

    import winft_lightning
    from winft_lightning import analyze as library_analyze
    from winft_lightning.core.analysis import DEFAULT_ALPHAS

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=4, embed_dim=32, depth=2, num_heads=2)  # fmt: skip
    x, n, grid = torch.randn(2, 3, 32, 32), 64, (8, 8)
    res = library_analyze(model, x)
    assert model.training  # its mode is restored
    assert res.grid == grid and res.u.shape == (2, n, n) and res.order.shape == (2, n)
    assert list(res.windows) == list(DEFAULT_ALPHAS)
    fields = res.fields(0.2)
    assert list(fields) == list(DEFAULT_ALPHAS)
    core = analyze(model.eval(), x, DEFAULT_ALPHAS, grid)
    assert torch.equal(res.u, core.u) and torch.equal(res.order, core.order)
    for alpha in DEFAULT_ALPHAS:
        assert res.windows[alpha].shape == (2, n, 4)
        assert torch.equal(res.windows[alpha], core.windows[alpha])
        want = ia.responsive_field(core.windows[alpha], core.order, 0.2, grid)
        assert fields[alpha].shape == (2, n, n) and torch.equal(fields[alpha], want)
    conf = Path(winft_lightning.__file__).parent / "conf" / "analyze" / "default.yaml"
    assert tuple(OmegaConf.load(conf).alphas) == DEFAULT_ALPHAS
    light = "import sys, winft_lightning; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", light], check=False).returncode == 0
