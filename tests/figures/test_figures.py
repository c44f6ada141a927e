"""Figures (figures.py), analysis_figures and the visualize CLI (the rollout and the analysis
itself: test_interactions.py, test_analysis.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.quiver import Quiver
from PIL import Image

import helpers
from winft_lightning import figures
from winft_lightning.core import interactions as ia
from winft_lightning.stages import visualize as V

NET = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
GRID = (4, 4)
N = 16


def image(h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g)


def random_u(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=g) ** 4


def colorbars(fig: Figure) -> list:
    return [ax for ax in fig.axes if isinstance(getattr(ax, "_colorbar", None), Colorbar)]


def panels(fig: Figure) -> list:
    bars = colorbars(fig)
    return [ax for ax in fig.axes if ax not in bars]


def assert_labelled(fig: Figure) -> None:
    """Every panel has a title; every panel row has a y label and every column an x label
    (outer labels); every colourbar has a label."""
    ps = panels(fig)
    assert ps and all(ax.get_title() for ax in ps)
    assert any(ax.get_xlabel() for ax in ps) and any(ax.get_ylabel() for ax in ps)
    for ax in ps:
        box = ax.get_position()
        row_mates = [o for o in ps if o.get_position().y0 < box.y1 and box.y0 < o.get_position().y1]
        col_mates = [o for o in ps if o.get_position().x0 < box.x1 and box.x0 < o.get_position().x1]
        assert any(o.get_ylabel() for o in row_mates), ax.get_title()
        assert any(o.get_xlabel() for o in col_mates), ax.get_title()
    for cb in colorbars(fig):
        assert cb.get_ylabel() or cb.get_xlabel()


def assert_png(fig: Figure, path: Path) -> None:
    fig.canvas.draw()  # lays out so positions are final
    assert_labelled(fig)
    out = figures.save(fig, path)
    assert out == path and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert min(arr.shape[:2]) > 200
    assert arr.std() > 20  # not blank
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 100  # real content, not a flat fill


# ---------------------------------------------------------------- figures


def test_to_hwc_accepts_chw_and_uint8():
    chw = image()
    hwc8 = (chw.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_allclose(figures.to_hwc(chw), chw.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(figures.to_hwc(hwc8), figures.to_hwc(chw), atol=1 / 255)


def test_attention_maps_figure(tmp_path):
    rows = torch.rand(2, 3, N)  # 2 blocks, 3 patches
    fig = figures.attention_maps_figure(image(), rows, [0, 6, 15], GRID)
    assert len(panels(fig)) == 6 and len(colorbars(fig)) == 2
    assert {ax.get_title().split(",")[0] for ax in panels(fig)} == {"$A_{1}$", "$A_{2}$"}
    assert_png(fig, tmp_path / "attn.png")


def test_uncertainty_rows_figure(tmp_path):
    fig = figures.uncertainty_rows_figure(image(), random_u(), [0, 9], GRID)
    assert len(panels(fig)) == 2 and len(colorbars(fig)) == 2
    # the overlay is row p of U on the patch grid
    overlay = panels(fig)[1].get_images()[-1].get_array()
    np.testing.assert_allclose(overlay, random_u()[9].view(GRID).numpy(), rtol=1e-6)
    assert_png(fig, tmp_path / "urows.png")


def test_window_rectangles_match_windows_in_pixels(tmp_path):
    grid, p_px = (4, 6), 8  # non-square grid: catches an x/y swap
    n = 24
    wins = torch.zeros(n, 4, dtype=torch.long)
    wins[7] = torch.tensor([0, 1, 3, 2])  # x 0..3, y 1..2
    wins[22] = torch.tensor([2, 0, 5, 3])
    other = wins.clone()
    other[7] = torch.tensor([1, 1, 1, 1])
    fig = figures.window_figure(image(32, 48), {0.1: wins, 0.5: other}, [7, 22], grid)
    assert len(panels(fig)) == 4
    rects = {}
    for ax in panels(fig):
        for r in ax.patches:
            if isinstance(r, Rectangle) and r.get_gid():
                rects.setdefault(r.get_gid(), []).append(
                    (r.get_x(), r.get_y(), r.get_width(), r.get_height())
                )
    assert rects["window:7"] == [(0, 8, 32, 16), (8, 8, 8, 8)]
    assert rects["window:22"] == [(16, 0, 32, 32)] * 2
    assert rects["patch:7"] == [(1 * p_px, 1 * p_px, 8, 8)] * 2  # p=7: x=1, y=1 on a 6-wide grid
    assert rects["patch:22"] == [(4 * p_px, 3 * p_px, 8, 8)] * 2
    assert_png(fig, tmp_path / "win.png")


def gt_field(u=None, alpha=0.1, beta=0.2):
    u = random_u() if u is None else u
    win = ia.awd_windows(u[None], alpha, GRID)
    return ia.responsive_field(win, ia.dip_order(u[None]), beta, GRID)[0]


@pytest.mark.parametrize("with_w", [False, True])
def test_responsive_field_figure(tmp_path, with_w):
    field = gt_field()
    w = torch.randint(0, 3, (N, N)) if with_w else None
    fig = figures.responsive_field_figure(image(), field, [3, 10], GRID, winft_w=w, num_blocks=2)
    assert len(panels(fig)) == (6 if with_w else 4)
    assert len(colorbars(fig)) == (2 if with_w else 0)
    gt = panels(fig)[(3 if with_w else 2) + 1].get_images()[-1].get_array()  # row 2, S_p
    np.testing.assert_array_equal(~np.ma.getmaskarray(gt), field[10].view(GRID).numpy())
    assert_png(fig, tmp_path / "rf.png")
    if with_w:  # a per-patch mapping gives the same panel
        fig2 = figures.responsive_field_figure(
            image(), field, [3, 10], GRID, winft_w={3: w[3], 10: w[10].view(GRID)}, num_blocks=2
        )
        np.testing.assert_array_equal(
            panels(fig2)[5].get_images()[-1].get_array(), w[10].view(GRID).numpy()
        )


def test_dip_figure(tmp_path):
    u = random_u()
    betas = [0.0, 0.25, 0.5]
    fig = figures.dip_figure(image(), u, GRID, betas)
    assert len(panels(fig)) == 2 + len(betas) and len(colorbars(fig)) == 1
    # the beta=0.5 panel marks exactly the 8 lowest-variance patches
    overlay = panels(fig)[-1].get_images()[-1].get_array()
    dropped = np.flatnonzero(~np.ma.getmaskarray(overlay).reshape(-1))
    assert sorted(dropped) == sorted(ia.dip_order(u[None])[0, :8].tolist())
    assert_png(fig, tmp_path / "dip.png")


def test_field_figure(tmp_path):
    field = gt_field()
    fig = figures.field_figure(image(), field, GRID)
    assert len(panels(fig)) == 2 and len(colorbars(fig)) == 1
    quivers = [c for c in panels(fig)[0].collections if isinstance(c, Quiver)]
    assert len(quivers) == 1
    size = panels(fig)[1].get_images()[-1].get_array()
    np.testing.assert_array_equal(size, field.sum(-1).view(GRID).numpy())
    assert_png(fig, tmp_path / "field.png")


def test_rollout_figure(tmp_path):
    imgs = torch.stack([image(seed=0), image(seed=1)])
    fig = figures.rollout_figure(
        imgs, torch.rand(2, N), torch.stack([random_u(), random_u(seed=1)]), GRID
    )
    assert len(panels(fig)) == 6 and len(colorbars(fig)) == 4
    assert_png(fig, tmp_path / "rollout.png")


# ---------------------------------------------------------------- claims figures


def _cell(effect, half):
    return {"effect": effect, "low": effect - half, "high": effect + half}


def test_verdict_figure_reads_near_and_far_rows(tmp_path):
    rows = [
        {"id": "C1", "verdict": "negligible", "margin": 0.1,
         "teachers": {"0": _cell(0.02, 0.01), "1": _cell(0.05, 0.02)}},
        {"id": "C3/variance", "verdict": "supported", "margin": 0.005,
         "teachers": {"0": _cell(0.30, 0.01), "1": _cell(0.38, 0.01)}},
    ]  # fmt: skip
    fig = figures.verdict_figure(rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    fig.draw_without_rendering()
    lo, hi = ax.get_xlim()
    assert lo < -1 and hi > 0.38 / 0.005  # the band and the farthest row both in view
    # the x label lies inside the canvas (it was clipped before)
    box = ax.xaxis.label.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    assert_png(fig, tmp_path / "verdicts.png")


def test_difference_figure_keeps_the_margin_band_visible(tmp_path):
    points = {"0": [[0.6, 0.58, 0.62], [0.002, -0.001, 0.004]]}
    fig = figures.difference_figure([0.1, 0.2], {"vs a": points, "vs b": points}, margin=0.005,
                                    xlabel="β", title="t")  # fmt: skip
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    fig.draw_without_rendering()
    # the ±0.5 pp band takes a visible share of the axis although the data reach 62 pp
    to_px = ax.transData.transform
    band = abs(to_px((0, 0.5))[1] - to_px((0, -0.5))[1])
    assert band > 0.1 * ax.get_window_extent().height
    assert_png(fig, tmp_path / "difference.png")


def test_perturbation_curves_draw_the_teachers_range(tmp_path):
    keys = [f"{o}:{d}" for o in ("variance", "random") for d in ("lowest", "highest")]
    acc = {"0": {k: [0.9, 0.8, 0.5] for k in keys}, "1": {k: [0.9, 0.6, 0.3] for k in keys}}
    fig = figures.perturbation_curves_figure([0.0, 0.5, 0.9], acc,
                                             {"variance": "DIP", "random": "random"})  # fmt: skip
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [90, 70, 40])  # the mean over teachers
    (band, _) = ax.collections[:2]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(30) and ys.max() == pytest.approx(90)  # min to max
    assert_png(fig, tmp_path / "curves.png")


def test_attention_distance_figure_gives_pixels_beside_patches(tmp_path):
    profiles = {"0": {"blocks": [[1.0, 2.0], [3.0, 4.0]], "hits": 2.5}}
    fig = figures.attention_distance_figure(profiles, {"uniform": 4.1}, "t", patch_size=4)
    ax = fig.axes[0]
    assert "patches" in ax.get_ylabel()
    (right,) = ax.child_axes
    assert "pixels" in right.get_ylabel() and "4" in right.get_ylabel()
    fig.draw_without_rendering()
    lo, hi = ax.get_ylim()  # the right axis's ticks are pixels: 4 x the patches in view
    ticks = [t for t in right.get_yticks() if 4 * lo <= t <= 4 * hi]
    assert len(ticks) >= 2 and max(ticks) > hi
    assert "renormalised" in fig._supxlabel.get_text()
    assert_png(fig, tmp_path / "distance.png")
    assert not figures.attention_distance_figure(profiles, {}, "t").axes[0].child_axes


# ---------------------------------------------------------------- analysis + CLI

FIGS = ("attention", "uncertainty_rows", "windows", "dip", "field", "responsive_field")


def test_analysis_figures_writes_all(tmp_path):
    model = helpers.tiny_vit(**NET)
    shown = image(seed=1)[None]
    w = torch.randint(0, 3, (1, N, N))
    paths = V.analysis_figures(
        model, (shown - 0.5) / 0.5, GRID, [0.1, 0.3], [0.0, 0.25], tmp_path,
        patches=[1, 10], winft_w=w, display=shown,
    )  # fmt: skip
    want = [tmp_path / f"img0_{k}.png" for k in FIGS] + [tmp_path / "rollout.png"]
    assert paths == want and all(p.stat().st_size > 5000 for p in paths)
    with pytest.raises(ValueError, match="outside"):
        V.analysis_figures(model, shown, GRID, [0.1], [0.1], tmp_path, patches=[16])


def tiny_ckpt(path: Path) -> Path:
    model = helpers.tiny_vit(**NET)
    state = {"net." + k: v for k, v in model.state_dict().items()}
    hp = {"net": dict(model_name="vit_tiny_patch16_224", **NET)}
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)
    return path


def test_load_image_resizes_and_centre_crops(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255  # the central square is white, the sides black
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = V.load_image(tmp_path / "a.png", 32)
    assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert x.mean() > 0.95  # only the white centre is kept


def test_cli_end_to_end(tmp_path):
    ckpt = tiny_ckpt(tmp_path / "tiny.ckpt")
    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "photo.jpg"
    )
    res = tmp_path / "runs" / "awd"
    res.mkdir(parents=True)
    (res / "results.json").write_text(
        json.dumps(dict(module="AWDModule", alpha=0.1, beta=0.0, top1=80.0, eo=100.0, eo_ratio=0.4))
    )
    out = tmp_path / "figs"
    args = [
        f"ckpt={ckpt}", f"images=[{tmp_path / 'photo.jpg'}]", f"out_dir={out}", "alphas=[0.1]",
        "betas=[0.25]", f"results=[{tmp_path / 'runs'}]", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]  # fmt: skip
    env = {**os.environ, "WINFT_ROOT": str(tmp_path)}
    proc = helpers.cli(
        *args, module="winft_lightning.visualize", timeout=120, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    want = [f"img0_{k}.png" for k in FIGS] + ["rollout.png", "tradeoff_eo.png"]
    assert names == sorted([*want, "tradeoff_eo_ratio.png", "figures.json"])
    for name in names:
        if name.endswith(".png"):
            with Image.open(out / name) as im:
                im.verify()
    drawn = json.loads((out / "figures.json").read_text())  # what the figures were drawn with
    assert drawn["ckpt"] == str(ckpt) and drawn["winft"] is None
    assert (drawn["alphas"], drawn["betas"]) == ([0.1], [0.25])
    assert (drawn["field_alpha"], drawn["field_beta"]) == (0.1, 0.25)  # defaults: first / largest


def test_run_batches_bundled_photos(tmp_path, monkeypatch):
    """images=[]: scikit-image's three photos, at the model's size, in batches of batch_size
    (rendering is stubbed here; it is covered above)."""
    calls = []

    def fake(model, x, grid, alphas, betas, out_dir, patches=None, display=None, **_):
        calls.append((tuple(x.shape), grid, alphas, betas, Path(out_dir), patches, display))
        return [Path(out_dir) / "x.png"]

    monkeypatch.setattr(V, "analysis_figures", fake)
    ckpt = tiny_ckpt(tmp_path / "tiny.ckpt")
    cfg = dict(ckpt=str(ckpt), images=[], out_dir=str(tmp_path / "o"), alphas=[0.2],
               betas=[0.25], batch_size=2, patches=[5])  # fmt: skip
    assert len(V.run(cfg)) == 2
    assert [c[0] for c in calls] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    assert [c[4].name for c in calls] == ["batch0", "batch1"]
    assert calls[0][1:4] == ((4, 4), [0.2], [0.25]) and calls[0][5] == [5]
    shown = calls[0][6]
    assert shown.min() >= 0 and shown.max() <= 1 and shown.std() > 0.1  # real photos, [0, 1]
