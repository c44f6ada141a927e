"""The explorer in a real browser (headless Chromium, selenium): clicks and slider moves on a
real analysed image draw exactly what ``core.interactions`` computes; the attention rows are
the capture's to the stated quantisation error; nothing leaves the page; the page is drawn."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from bench import browser as B
from helpers import REPO
from winft_lightning.core import interactions as ia
from winft_lightning.core.analysis import DEFAULT_ALPHAS, analyze
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.explorer.codec import decode_array, max_error
from winft_lightning.explorer.pack import DEFAULT_BETAS

PATCHES = (0, 27, 63)  # a corner, an interior patch, the opposite corner
ALPHA_STOPS = (1, 3)  # 0.05, 0.2
BETA_STOPS = (2, 6)  # 0.1, 0.3


def cells(mask: torch.Tensor) -> list[int]:
    return [int(j) for j in torch.nonzero(mask.flatten()).flatten()]


def test_clicks_and_sliders_draw_what_core_interactions_compute(page, explored):
    res = analyze(explored.model, explored.x, DEFAULT_ALPHAS, explored.grid)
    grid, n = explored.grid, explored.n
    seen_dropped_in_window = False
    for p in PATCHES:
        B.click_cell(page, p)
        for ai in ALPHA_STOPS:
            B.set_slider(page, "alpha", ai)
            alpha = DEFAULT_ALPHAS[ai]
            for bi in BETA_STOPS:
                s = B.set_slider(page, "beta", bi)
                beta, drawn = DEFAULT_BETAS[bi], s["drawn"]
                assert (s["patch"], s["alpha"], s["beta"]) == (p, alpha, beta)
                window = ia.windows_to_mask(res.windows[alpha], grid)[0, p]
                field = ia.responsive_field(res.windows[alpha], res.order, beta, grid)[0, p]
                dropped = ~ia.dip_keep(res.order, beta)[0]
                assert drawn["window"] == cells(window)
                assert drawn["field"] == cells(field)
                assert drawn["dropped"] == drawn["dipDropped"] == cells(dropped)
                assert s["drop"] == ia.dip_drop_count(beta, n) == len(drawn["dropped"])
                assert drawn["hits"] == cells(ia.top_interactions(res.u, alpha)[0, p])
                top = int(res.u[0, p].argmax())
                assert drawn["uArgmax"] == top and max(drawn["uRow"]) == drawn["uRow"][top]
                seen_dropped_in_window |= bool((window & dropped).any())
                x_l, y_t, x_r, y_b = (int(v) for v in res.windows[alpha][0, p])
                readout = page.find_element("id", "readout").text
                assert f"window {x_r - x_l + 1} × {y_b - y_t + 1}" in readout
                assert f"field |S_p| = {int(field.sum())}" in readout
    assert seen_dropped_in_window  # some field differs from its window: DIP was exercised
    clicks = B.state(page)["timing"]["clicks"]
    assert len(clicks) == len(PATCHES) and all(0 <= c["drawMs"] < 50 for c in clicks), clicks


def test_attention_rows_are_the_capture_within_the_stated_error(page, explored):
    p, n = 27, explored.n
    B.click_cell(page, p, canvas="panel-attn")
    mean = analyze(explored.model, explored.x, patches=[p]).rows[0, :, 0].double()  # [l, N]
    heads = [a[0, :, p].double() for a in iter_block_attention(explored.model, explored.x)]
    entry = explored.packed["images"][0]
    for key, rows, truth in (("attention", 3, mean), ("head_attention", 6, torch.stack(heads))):
        scale = decode_array(entry[key]["scale"]).reshape(rows, n)
        stated = max_error(scale).reshape((*truth.shape[:-1], n))[..., p]  # scale / 2
        assert bool((stated <= truth.amax(-1).numpy() / 510 * (1 + 1e-6)).all())  # max / 510
        bound = stated * (1 + 1e-6)  # float32 scale times an 8-bit level, read in float64
        for b in range(3):
            s = B.select(page, "block", b)
            for h in [-1] if key == "attention" else range(2):
                s = B.select(page, "head", h)
                want = truth[b] if h < 0 else truth[b, h]
                err = np.abs(np.asarray(s["drawn"]["attnRow"]) - want.numpy()).max()
                limit = bound[b] if h < 0 else bound[b, h]
                assert err <= limit, (key, b, h, err, limit)
                assert s["drawn"]["attnBlock"] == b and s["drawn"]["attnHead"] == h
        B.select(page, "head", -1)
    # WinfT's predicted W (Fig. 10) beside the field, to the same error
    s = B.state(page)
    w = explored.winft_w[0, p].double().numpy()
    w_scale = decode_array(entry["winft"]["scale"])[p]
    assert np.abs(np.asarray(s["drawn"]["wRow"]) - w).max() <= max_error(w_scale) * (1 + 1e-6)


def test_the_page_opens_offline_and_sends_no_request(browser, explored):
    html = explored.path.read_text()
    assert "://" not in html and "<link" not in html  # no URL at all: no src, href, CDN
    assert html.count("<script") == 2  # the data and the page's own script, both inline
    browser.get_log("performance")  # forget earlier pages' events
    browser.execute_cdp_cmd("Network.enable", {})
    offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
    try:
        B.open_explorer(browser, explored.path)
        B.click_cell(browser, 9)
        B.set_slider(browser, "beta", 4)
        resources = browser.execute_script("return performance.getEntriesByType('resource')")
        assert resources == []
        assert B.requests_made(browser) == [explored.path.resolve().as_uri()]  # itself only
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", offline | {"offline": False})
        browser.execute_cdp_cmd("Network.disable", {})
    # markup in the title and the image's name is text, not markup
    assert browser.title == "test <explorer>"
    assert browser.find_element("css selector", "#images button").text == explored.name.strip()


def test_the_drawn_page_is_not_blank(page):
    shot = np.asarray(Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB"))
    assert shot.std() > 20
    colours = shot.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
    assert len(np.unique(colours)) > 200
    for panel in ("panel-u", "panel-field", "panel-attn", "panel-w", "panel-dip", "panel-rollout"):
        r = page.find_element("id", panel).rect  # in the screenshot's pixels (scale factor 1)
        x, y = round(r["x"]), round(r["y"])
        pixels = shot[y : y + round(r["height"]), x : x + round(r["width"])].astype(float)
        assert pixels.size and pixels.std() > 5, panel


def test_the_readme_screenshot_is_drawn_by_this_code(browser, explored, tmp_path):
    """README's picture is bench.explorer.screenshot's output (the explorer written, opened,
    clicked): here with the tiny ViT, in the shared browser."""
    from bench.explorer import screenshot

    readme = (REPO / "README.md").read_text()
    assert "(docs/explorer.png)" in readme
    assert "`python -m bench.explorer --screenshot docs/explorer.png`" in readme
    png = screenshot(tmp_path / "shot.png", explored.model, 32, tmp_path / "s.html", "t", browser)
    with Image.open(png) as ours, Image.open(REPO / "docs" / "explorer.png") as committed:
        assert ours.width == committed.width == 1620
        shot = np.asarray(ours.convert("RGB")).astype(float)
    assert shot.std() > 20 and B.state(browser)["drawn"]["attnBlock"] == 2  # depth 3: block 3
