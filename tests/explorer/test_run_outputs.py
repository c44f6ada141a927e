"""A training run's own explorer (``lit.callbacks.interaction_explorer``, written by the figure
callback at the end of fit): the run's teacher analysed on the drawn images, WinfT's predicted
W beside the fields, the sliders at the run's alpha and beta."""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from helpers import TINY_NET, tiny_vit
from winft_lightning.core.analysis import DEFAULT_ALPHAS, analyze
from winft_lightning.explorer.codec import decode_array
from winft_lightning.explorer.pack import DEFAULT_BETAS
from winft_lightning.lit.callbacks import interaction_explorer
from winft_lightning.lit.modules import MODULES
from winft_lightning.models import predicted_window_sum


def page_data(path) -> dict:
    return json.loads(re.search(r'id="explorer-data">(.*?)</script>', path.read_text(), re.S)[1])


def test_a_runs_explorer_analyses_its_teacher_beside_winfts_w(tmp_path, teacher_ckpt):
    torch.manual_seed(0)
    net = {k: v for k, v in TINY_NET.items()}
    winft = MODULES["winft"](net=net, alpha=0.1, beta=0.25).eval()
    x = torch.randn(2, 3, 16, 16)
    batch = {"image": x, "label": torch.zeros(2, dtype=torch.long), "key": ["a", "b"]}
    path = interaction_explorer(winft, batch, tmp_path / "explorer.html", str(teacher_ckpt))
    data = page_data(path)
    assert [im["name"] for im in data["images"]] == ["a", "b"]
    assert data["alphas"] == list(DEFAULT_ALPHAS) and data["betas"] == list(DEFAULT_BETAS)
    assert data["start"] == {"alpha": DEFAULT_ALPHAS.index(0.1), "beta": DEFAULT_BETAS.index(0.25)}
    teacher = tiny_vit()  # the weights untrained_teacher saved in teacher_ckpt
    want = analyze(teacher, x)
    for i in range(2):
        assert np.array_equal(decode_array(data["images"][i]["order"]), want.order[i])
    w_scale = decode_array(data["images"][1]["winft"]["scale"])
    top = predicted_window_sum(winft.net, x)[1].amax(-1).numpy()
    np.testing.assert_allclose(w_scale, top / 255, rtol=1e-6)
    # a full-attention run is its own teacher; a masked run without its teacher has none
    vit = MODULES["vit"](net=net).eval()
    own = page_data(interaction_explorer(vit, batch, tmp_path / "vit.html"))
    assert own["start"]["alpha"] == len(DEFAULT_ALPHAS) // 2 and own["images"][0]["winft"] is None
    assert interaction_explorer(winft, batch, tmp_path / "none.html") is None
    assert not (tmp_path / "none.html").exists()
