"""The explorer's size and speed, measured, and the README's screenshot, made by the same code.

    python -m bench.explorer [--grids 64,196,576] [--clicks 20] [--out FILE.json]
    python -m bench.explorer --screenshot docs/explorer.png [--ckpt TEACHER]

Sizes: one scikit-image photo (the astronaut) through a ViT with ViT-B's depth (12) and heads
(12), patch 16, at 128 / 224 / 384 px (N = 64 / 196 / 576), width 192 and mimetic attention
(``models.mimetic``: local, structured attention without training; the width changes no stored
size), written as the default explorer and with per-head maps; the file's bytes, each part's,
the bound without deflate, and the largest quantisation error seen (relative to its row's
maximum; the stated bound is 1/510). Speed: the file opened in headless Chromium
(``bench/browser.py``), ``--clicks`` patches clicked, each click's redraw timed in the page
(``performance.now()`` around the redraw of every panel; and from the click event's time stamp
to the next animation frame). The screenshot: the same model at 224 px (or ``--ckpt``'s
teacher) on the astronaut, a patch clicked, the sliders moved, a cell hovered.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from bench import browser as B
from winft_lightning.explorer import (
    analyse_for_explorer,
    pack_explorer,
    pack_images,
    write_explorer,
)
from winft_lightning.explorer.codec import decode_array, max_error
from winft_lightning.explorer.pack import dequantised
from winft_lightning.models.mimetic import mimetic_init_
from winft_lightning.stages.visualize import sample_images

SIZES = {64: 128, 196: 224, 576: 384}  # N -> image size at patch 16
NET = dict(embed_dim=192, depth=12, num_heads=12, patch_size=16, num_classes=1000)


def vit_b_like(img_size: int) -> torch.nn.Module:
    """ViT-B's depth and heads at ``img_size`` (width 192), mimetic attention, seed 0."""
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", img_size=img_size, **NET).eval()
    with torch.no_grad():
        return mimetic_init_(model, generator=torch.Generator().manual_seed(0))


def page_of(
    model: torch.nn.Module,
    display: torch.Tensor,
    heads: bool,
    norm: tuple[list[float], list[float]] = ([0.5] * 3, [0.5] * 3),
    **kw: Any,
):
    """(packed, analysis) of ``display`` in [0, 1], normalised by ``norm`` (mean, std)."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    res = analyse_for_explorer(model, (display - mean) / std, heads=heads)
    grid = res.grid
    packed = pack_explorer(
        pack_images(res, display, names=["astronaut"]), grid=grid, alphas=list(res.windows),
        blocks=len(model.blocks), heads=model.blocks[0].attn.num_heads, patch_size=16,
        img_size=tuple(display.shape[-2:]), title=f"explorer at N = {grid[0] * grid[1]}", **kw,
    )  # fmt: skip
    return packed, res


def _b64(arr: dict) -> int:
    return len(arr["data"])


def part_bytes(entry: dict) -> dict[str, int]:
    """Base64 characters per part of one image entry (maps: levels + scales)."""
    out = {"image": len(entry["image"]["data"])}
    for key in ("u", "attention", "head_attention", "winft"):
        if entry.get(key):
            out[key] = _b64(entry[key]["q"]) + _b64(entry[key]["scale"])
    out["hits"] = sum(map(_b64, entry["hits"]))
    out["windows"] = sum(map(_b64, entry["windows"]))
    out["order+argmax+rollout"] = sum(_b64(entry[k]) for k in ("order", "u_argmax", "rollout"))
    return out


def raw_bound(entry: dict) -> int:
    """Base64 characters of the entry's arrays without deflate (their content-free size)."""
    arrays = [entry[k] for k in ("order", "u_argmax", "rollout")]
    arrays += entry["hits"] + entry["windows"]
    for key in ("u", "attention", "head_attention", "winft"):
        if entry.get(key):
            arrays += [entry[key]["q"], entry[key]["scale"]]
    raw = sum(decode_array(a).nbytes for a in arrays) + 3 * len(entry["image"]["data"]) // 4
    return 4 * ((raw + 2) // 3)


def worst_error(entry: dict, res) -> dict[str, float]:
    """The largest |stored - true| over each map, relative to its row's max, and the largest
    ratio of it to the stated bound (scale / 2)."""
    out = {}
    truths = {"u": res.u[0], "attention": res.rows[0]}
    if res.head_rows is not None:
        truths["head_attention"] = res.head_rows[0]
    for key, truth in truths.items():
        t = truth.double().numpy()
        err = np.abs(dequantised(entry, key) - t)
        top = t.max(axis=-1, keepdims=True)
        scale = decode_array(entry[key]["scale"]).reshape(t.shape[:-1])
        rel = np.where(top > 0, err / np.where(top > 0, top, 1), 0).max()
        ratio = (err / np.maximum(max_error(scale)[..., None], 1e-300)).max()
        out[key] = {"max_rel_to_row_max": float(rel), "max_over_bound": float(ratio)}
    return out


def click_times(driver: Any, path: Path, clicks: int, seed: int = 0) -> dict[str, Any]:
    state = B.open_explorer(driver, path, timeout=120)
    n = state["grid"][0] * state["grid"][1]
    cells = np.random.default_rng(seed).choice(n, size=clicks, replace=False)
    for cell in cells:
        B.click_cell(driver, int(cell))
    done = B.state(driver)["timing"]
    draw = [c["drawMs"] for c in done["clicks"]]
    frame = [c["frameMs"] for c in done["clicks"]]
    return {
        "ready_ms": done["readyMs"],
        "draw_ms_median": statistics.median(draw), "draw_ms_max": max(draw),
        "frame_ms_median": statistics.median(frame), "frame_ms_max": max(frame),
        "clicks": len(draw),
    }  # fmt: skip


def measure(grids: list[int], clicks: int, out_dir: Path) -> dict[str, Any]:
    driver = B.chromium()
    version = driver.capabilities.get("browserVersion")
    rows = []
    try:
        for n in grids:
            size = SIZES[n]
            model, display = vit_b_like(size), sample_images(size)[:1]
            for heads in (False, True):
                start = time.perf_counter()
                packed, res = page_of(model, display, heads)
                seconds = time.perf_counter() - start
                path = write_explorer(
                    out_dir / f"explorer_n{n}{'_heads' if heads else ''}.html", packed
                )
                entry = packed["images"][0]
                rows.append({
                    "n": n, "img_size": size, "heads": heads, "file_bytes": path.stat().st_size,
                    "image_entry_chars": len(json.dumps(entry)), "no_deflate_bound": raw_bound(entry),
                    "parts": part_bytes(entry), "pack_seconds": round(seconds, 2),
                    "quantisation": worst_error(entry, res),
                    "browser": click_times(driver, path, clicks),
                })  # fmt: skip
                print(json.dumps({k: rows[-1][k] for k in ("n", "heads", "file_bytes", "browser")}))
    finally:
        driver.quit()
    from winft_lightning.runtime.machine import describe, summary

    machine = describe()
    return {"date": date.today().isoformat(), "machine": machine, "summary": summary(machine),
            "chromium": version, "model": NET, "rows": rows}  # fmt: skip


def screenshot(
    out: Path,
    model: torch.nn.Module,
    size: int,
    html: Path,
    title: str,
    driver: Any = None,
    norm: tuple[list[float], list[float]] = ([0.5] * 3, [0.5] * 3),
) -> Path:
    """The README's picture: ``model``'s explorer of the astronaut at ``size`` px (written to
    ``html``), opened in Chromium (``driver``, else a new one), a patch clicked, a block chosen,
    the square-root heat on, a cell hovered; the page's full height saved as ``out``."""
    import io

    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains

    packed, _ = page_of(model, sample_images(size)[:1], True, norm, start_alpha=0.1, start_beta=0.3)
    packed["title"] = title
    write_explorer(html, packed)
    own = driver is None
    driver = driver or B.chromium(width=1620, height=900)
    saved = driver.get_window_size()
    try:
        driver.set_window_size(1620, 900)
        B.open_explorer(driver, html, timeout=120)
        for _ in range(2):  # the window's height is the viewport's plus the browser's own
            page, view = driver.execute_script(
                "return [document.documentElement.scrollHeight, window.innerHeight]"
            )
            driver.set_window_size(1620, driver.get_window_size()["height"] + page - view)
        gh, gw = packed["grid"]
        B.click_cell(driver, (gh * 5 // 14) * gw + gw // 2)  # the astronaut's face
        B.select(driver, "block", min(5, packed["blocks"] - 1))
        driver.find_element("id", "sqrt").click()
        canvas = driver.find_element("id", "panel-u")
        ActionChains(driver, duration=0).move_to_element_with_offset(canvas, 30, 25).perform()
        png = driver.get_screenshot_as_png()
    finally:
        if own:
            driver.quit()
        else:
            driver.set_window_size(saved["width"], saved["height"])
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", default="64,196,576")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--ckpt", default=None)
    args = parser.parse_args()
    out_dir = Path("outputs/bench/explorer")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.screenshot:
        html = out_dir / "screenshot.html"
        if args.ckpt:
            from winft_lightning.models.teacher import teacher_norm
            from winft_lightning.stages.visualize import load_model

            model, size, _, _, info = load_model(args.ckpt)
            title, norm = f"patch interactions: {Path(args.ckpt).name}", teacher_norm(model, info)
            print(screenshot(args.screenshot, model, size, html, title, norm=norm))
        else:
            title = "patch interactions: ViT (depth 12, 12 heads, mimetic init), N = 196"
            print(screenshot(args.screenshot, vit_b_like(224), 224, html, title))
        return
    result = measure([int(g) for g in args.grids.split(",")], args.clicks, out_dir)
    dest = args.out or Path("outputs/bench") / f"explorer_{result['date']}.json"
    dest.write_text(json.dumps(result, indent=2))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
