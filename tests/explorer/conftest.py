"""The explorer's fixtures: one headless Chromium session for every browser test of this folder
(``bench/browser.py``; the tests skip, naming the install command, where Chromium or its driver
is missing), and one real analysed image: scikit-image's astronaut at 32 px through a tiny
real timm ViT (depth 3, 2 heads, patch 4: an 8 x 8 grid), with a tiny real WinfT net's
predicted W, written as an explorer with per-head maps."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import browser as B

NET = dict(img_size=32, patch_size=4, depth=3)
# a name that would end the page's data <script> if it were not escaped
NAME = "astronaut </script><!-- & <b>"


@pytest.fixture(scope="session")
def browser():
    why = B.missing()
    if why:
        pytest.skip(f"the explorer's browser tests need Chromium: {why}")
    driver = B.chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def explored(tmp_path_factory):
    """The real analysed image's explorer file and what it was made from."""
    from helpers import tiny_vit
    from winft_lightning.explorer import explore, write_explorer
    from winft_lightning.models import build_vit, predicted_window_sum
    from winft_lightning.stages.visualize import sample_images

    model = tiny_vit(**NET)
    display = sample_images(32)[:1]
    x = (display - 0.5) / 0.5
    torch.manual_seed(1)
    winft = build_vit(model_name="vit_tiny_patch16_224", num_classes=10, embed_dim=32,
                      num_heads=2, attn="winft", **NET).eval()  # fmt: skip
    with torch.no_grad():
        winft_w = predicted_window_sum(winft, x)
    packed = explore(
        model, x, display, heads=True, winft_w=winft_w, names=[NAME],
        title="test <explorer>", source={"teacher": "tiny ViT"},
    )  # fmt: skip
    path = write_explorer(tmp_path_factory.mktemp("explorer") / "explorer.html", packed)
    return SimpleNamespace(
        model=model, x=x, display=display, winft_w=winft_w, packed=packed, path=Path(path),
        grid=(8, 8), n=64, name=NAME,
    )  # fmt: skip


@pytest.fixture
def page(browser, explored):
    """The browser with the analysed image's explorer freshly opened (sliders at their start)."""
    B.open_explorer(browser, explored.path)
    return browser
