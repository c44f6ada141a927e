"""The explorer's data without a browser: the 8-bit maps keep their stated error, the exact
parts (windows, DIP order, drop counts, U' hits, U's argmax) are the core functions' own, the
page inlines everything, and an analysis result writes its explorer (and shows in Jupyter)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import helpers
from winft_lightning import analyze
from winft_lightning.core import interactions as ia
from winft_lightning.core.analysis import DEFAULT_ALPHAS
from winft_lightning.explorer import codec, explorer_html, pack_explorer
from winft_lightning.explorer.pack import DEFAULT_BETAS, dequantised


def test_quantised_rows_stay_within_half_a_step_of_their_values():
    g = torch.Generator().manual_seed(0)
    rows = torch.rand(200, 97, generator=g, dtype=torch.float64) ** 6  # peaked, like attention
    rows[3] = 0.0  # an all-zero row
    rows[4] *= 1e-9  # tiny values
    rows[5] *= 1e6  # large ones
    values = rows.numpy()
    q, scale = codec.quantise_rows(values)
    back = codec.dequantise_rows(q, scale)
    err = np.abs(back - values)
    assert q.dtype == np.uint8 and scale.dtype == np.float32 and q.max() == codec.LEVELS
    assert (err <= codec.max_error(scale)[:, None] * (1 + 1e-9)).all()
    assert (codec.max_error(scale) <= values.max(axis=1) / 510 * (1 + 1e-6)).all()  # max / 510
    assert err.max() > 0.4 * codec.max_error(scale).max()  # the bound is met, not vacuous
    assert (back[3] == 0).all() and scale[3] == 0
    for bad in (-values, values * np.nan):
        with pytest.raises(ValueError, match="quantise_rows"):
            codec.quantise_rows(bad)


@pytest.mark.parametrize("deflate", [True, False])
def test_arrays_read_back_as_written(deflate):
    arrays = {
        "u8": np.arange(300) % 256,
        "u16": np.arange(70_000) % 65_536,
        "f32": np.linspace(-1, 1, 50, dtype=np.float32),
    }
    for dtype, a in arrays.items():
        enc = codec.encode_array(a.reshape(-1, 10), dtype, deflate=deflate)
        assert np.array_equal(codec.decode_array(enc), a.reshape(-1, 10))
        assert enc["deflate"] == (deflate and enc["deflate"])
    with pytest.raises(ValueError, match="do not fit u8"):
        codec.encode_array(np.array([256]), "u8")
    bits = np.random.default_rng(0).random(77) < 0.3
    packed = codec.pack_bits(bits)
    assert [bool(packed[i >> 3] >> (i & 7) & 1) for i in range(77)] == bits.tolist()


def test_the_exact_parts_are_the_core_functions_own(explored):
    """Windows, order, U' hits, argmax and drop counts as Python computed them; U and the
    attention rows to the stated error."""
    res = analyze(explored.model, explored.x, DEFAULT_ALPHAS, patches=range(explored.n))
    packed, n = explored.packed, explored.n
    entry = packed["images"][0]
    assert packed["alphas"] == list(DEFAULT_ALPHAS) and packed["betas"] == list(DEFAULT_BETAS)
    assert packed["drops"] == [ia.dip_drop_count(b, n) for b in DEFAULT_BETAS]
    assert packed["drops"][:4] == [0, 3, 6, 9]  # floor(beta * 64): 0.15 * 64 = 9.6 -> 9
    for k, alpha in enumerate(DEFAULT_ALPHAS):
        assert np.array_equal(codec.decode_array(entry["windows"][k]), res.windows[alpha][0])
        bits = codec.decode_array(entry["hits"][k])
        hits = np.unpackbits(bits, bitorder="little")[: n * n].reshape(n, n).astype(bool)
        assert np.array_equal(hits, ia.top_interactions(res.u, alpha)[0].numpy())
    assert np.array_equal(codec.decode_array(entry["order"]), res.order[0])
    assert np.array_equal(codec.decode_array(entry["u_argmax"]), res.u[0].argmax(-1))
    for key, truth in (("u", res.u[0]), ("attention", res.rows[0])):
        scale = codec.decode_array(entry[key]["scale"]).reshape(truth.shape[:-1])
        err = np.abs(dequantised(entry, key) - truth.double().numpy())
        assert (err <= codec.max_error(scale)[..., None] * (1 + 1e-6)).all(), key
    assert packed["start"] == {"alpha": 3, "beta": 0}  # the middle alpha, beta 0


def test_the_page_is_one_file_with_nothing_outside(explored):
    html = explorer_html(explored.packed)
    assert "://" not in html and not re.search(r"\b(src|href)\s*=\s*[\"']", html)
    data = re.search(
        r'<script type="application/json" id="explorer-data">(.*?)</script>', html, re.S
    )
    assert json.loads(data[1]) == json.loads(json.dumps(explored.packed))  # markup escaped
    assert html.count("</script>") == 2


def test_bad_pages_are_refused(explored):
    shared = dict(grid=(8, 8), blocks=3, heads=2, patch_size=4, img_size=(32, 32))
    images = explored.packed["images"]
    with pytest.raises(ValueError, match=r"betas=1\.0 is outside"):
        pack_explorer(images, alphas=DEFAULT_ALPHAS, betas=[0.0, 1.0], **shared)
    with pytest.raises(ValueError, match=r"start_beta=0\.33 is not one of"):
        pack_explorer(images, alphas=DEFAULT_ALPHAS, start_beta=0.33, **shared)
    with pytest.raises(ValueError, match="was analysed at"):  # hits and windows by alpha order
        pack_explorer(images, alphas=DEFAULT_ALPHAS[::-1], **shared)


def test_an_analysis_result_writes_its_explorer_and_shows_inline(tmp_path):
    model = helpers.tiny_vit()
    res = analyze(model, torch.randn(2, 3, 16, 16), alphas=(0.1, 0.2))
    path = res.explorer(tmp_path / "mine.html", heads=True)
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', path.read_text(), re.S)[1])
    assert data["alphas"] == [0.1, 0.2] and len(data["images"]) == 2 and data["grid"] == [4, 4]
    assert data["images"][0]["head_attention"]["q"]["shape"] == [2, 2, 16, 16]  # l, k, N, N
    inline = res._repr_html_()
    assert inline.startswith("<iframe srcdoc=") and "explorer-data" in inline
    with pytest.raises(ValueError, match="holds no model"):
        type(res)(**{**vars(res), "model": None}).explorer(tmp_path / "x.html")
    with pytest.raises(ValueError, match=r"does not end in \.html"):
        res.explorer(tmp_path / "mine.txt")
