"""The claims stage (claims_stage.py, claims_table.py, figures/claims.py) end to end on a real
digits shard set and a tiny teacher trained here for a few seconds: every row's interval and
its verdict (recomputed by claims.verdict), accuracies against plain forward loops, seeded
controls, claims.json and the figures."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import TINY_NET, untrained_teacher
from winft_lightning.core import claims as C
from winft_lightning.core.claims_table import KEEP_PAPER, band_verdict, claims_markdown
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.models import awd_attn_mask, build_vit
from winft_lightning.models.teacher import load_teacher
from winft_lightning.stages.claims import collect_claims, measure_claims, write_claims

MEAN, STD = [0.3053] * 3, [0.3759] * 3
ALPHAS, BETAS = (0.05, 0.1, 0.5), (0.2, 0.5)


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("claims_stage")]


def _loader(root, split, batch_size=32):
    dm = ShardDataModule(root, batch_size=batch_size, num_workers=0, img_size=16, mean=MEAN,
                         std=STD, hflip=False)  # fmt: skip
    return dm.make_loader(split, rank=0, world_size=1), dm.counts[split]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, digits_shards):
    """A tiny teacher (helpers.TINY_NET, N = 16) trained for 150 steps on the 200 training
    digits, saved as the pipeline's Lightning checkpoint (with its normalisation)."""
    path = untrained_teacher(tmp_path_factory.mktemp("claims_teacher") / "teacher.ckpt")
    ckpt = torch.load(path, weights_only=True)
    net = build_vit(**TINY_NET)
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    batches = [(b["image"], b["label"]) for b in _loader(digits_shards, "train", 50)[0]]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    for step in range(150):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    ckpt["state_dict"] = {f"net.{k}": v for k, v in net.state_dict().items()}
    ckpt["datamodule_hyper_parameters"] = {"mean": MEAN, "std": STD, "img_size": 16}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def result(teacher, digits_shards):
    return measure_claims(teacher, digits_shards, alphas=ALPHAS, betas=BETAS, batch_size=32,
                          device="cpu", num_workers=0)  # fmt: skip


def _interval(row) -> C.Interval:
    return C.Interval(row["effect"], row["low"], row["high"], row["n"], row["method"])


def test_every_row_has_an_interval_and_the_verdict_its_rule_gives(result, digits_shards):
    test_images = _loader(digits_shards, "test")[1]
    rows = result["claims"]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 2 + 2 * len(ALPHAS) + 2 * len(BETAS) + 1
    assert {"C1", "C1b", "keep", "C2/random/alpha=0.1", "C3/highest/beta=0.2"} <= set(ids)
    assert result["images"] == test_images == 60
    verdicts = (C.SUPPORTED, C.CONTRADICTED, C.INCONCLUSIVE)
    for r in rows:
        assert r["low"] <= r["effect"] <= r["high"], r["id"]
        assert r["verdict"] in verdicts
        ci = _interval(r)
        if r["direction"] == "within":  # the claimed value as a band, by claims.verdict
            low, high = r["details"]["band"]
            floor, ceiling = C.verdict(ci, low, "greater"), C.verdict(ci, high, "less")
            want = (C.SUPPORTED if floor == ceiling == C.SUPPORTED
                    else C.CONTRADICTED if C.CONTRADICTED in (floor, ceiling)
                    else C.INCONCLUSIVE)  # fmt: skip
        else:
            want = C.verdict(ci, r["null"], r["direction"])
        assert r["verdict"] == want, r["id"]
        if r["claim"] in ("C2", "C3", "keep"):
            assert r["n"] == test_images, r["id"]
    by = {r["id"]: r for r in rows}
    assert by["C1"]["n"] + by["C1"]["details"]["skipped_images"] == test_images
    assert by["C1b"]["n"] + by["C1b"]["details"]["skipped_images"] == test_images
    assert (by["C1"]["null"], by["C1"]["direction"]) == (1.0, "less")
    assert by["keep"]["null"] == pytest.approx(KEEP_PAPER)
    headline = [r["id"] for r in rows if r["headline"]]
    assert headline == ["C1", "C1b", "C2/random/alpha=0.1", "C2/centred/alpha=0.1",
                        "C3/random/beta=0.2", "C3/highest/beta=0.2", "keep"]  # fmt: skip
    # C2 rows are paired differences of the curves' accuracies
    point = result["curves"]["alpha"][1]
    assert by["C2/random/alpha=0.1"]["effect"] == pytest.approx(
        point["awd"]["estimate"] - point["random"]["estimate"]
    )
    table = claims_markdown(result)
    assert table.count("\n") == 2 + len(headline) and "AWD keeps ~23 %" in table


def test_band_verdict_on_planted_intervals():
    def iv(lo, hi):
        return C.Interval((lo + hi) / 2, lo, hi, 100, "planted")

    assert band_verdict(iv(0.21, 0.25), 0.18, 0.28) == C.SUPPORTED
    assert band_verdict(iv(0.50, 0.56), 0.18, 0.28) == C.CONTRADICTED
    assert band_verdict(iv(0.05, 0.10), 0.18, 0.28) == C.CONTRADICTED
    assert band_verdict(iv(0.25, 0.31), 0.18, 0.28) == C.INCONCLUSIVE


def test_accuracies_equal_plain_forward_loops(result, teacher, digits_shards):
    """Unrestricted top-1 from the timm teacher; AWD(0.1) top-1 through timm's attn_mask path,
    windows from a separate analysis: both as the stage's curves say."""
    from winft_lightning.core.analysis import analyse

    model, info = load_teacher(teacher)
    awd = build_vit(**TINY_NET, attn="awd", checkpoint=str(teacher)).eval()
    plain = windowed = total = 0
    loader, _ = _loader(digits_shards, "test", batch_size=7)  # another batching
    with torch.no_grad():
        for batch in loader:
            x, y = batch["image"], batch["label"]
            plain += int((model(x).argmax(-1) == y).sum())
            win = analyse(model, x, (0.1,), info.grid).windows[0.1]
            mask = awd_attn_mask(win, info.grid, 1)
            windowed += int((awd(x, attn_mask=mask).argmax(-1) == y).sum())
            total += len(y)
    curves = result["curves"]
    assert curves["unrestricted"]["estimate"] == pytest.approx(plain / total)
    assert result["teacher_top1"] == curves["unrestricted"]
    assert curves["alpha"][1]["alpha"] == 0.1
    assert curves["alpha"][1]["awd"]["estimate"] == pytest.approx(windowed / total)
    assert plain / total > 0.3  # a real, if tiny, teacher: chance is 0.1


def test_random_controls_follow_the_seed(teacher, digits_shards):
    def run(seed):
        per, _ = collect_claims(teacher, digits_shards, alphas=(0.1,), betas=(0.5,), seed=seed,
                                batch_size=32, device="cpu", num_workers=0)  # fmt: skip
        return per

    a, b, other = run(0), run(0), run(1)
    for key in a.correct:
        assert torch.equal(a.correct[key], b.correct[key]), key
    assert torch.equal(a.ratio, b.ratio) and (a.random_hist == b.random_hist).all()
    assert not torch.equal(a.ratio, other.ratio)  # C1's random draws
    assert torch.equal(a.correct[("awd", 0.1)], other.correct[("awd", 0.1)])  # no draw
    assert torch.equal(a.gap, other.gap)
    controls = [("random", 0.1), ("dip_random", 0.5)]
    assert any(not torch.equal(a.correct[k], other.correct[k]) for k in controls)


def test_limit_streams_the_first_images(teacher, digits_shards):
    per, facts = collect_claims(teacher, digits_shards, alphas=(0.1,), betas=(0.2,), limit=25,
                                batch_size=10, device="cpu", num_workers=0)  # fmt: skip
    assert per.n == 25 and all(len(v) == 25 for v in per.correct.values())
    assert facts["split_images"] == 60 and facts["grid"] == [4, 4]


def test_write_claims_saves_json_and_figures(result, tmp_path):
    paths = write_claims(result, tmp_path / "claims")
    assert set(paths) == {"json", "locality", "alpha", "beta"}
    saved = json.loads(paths["json"].read_text())
    assert saved["claims"] == json.loads(json.dumps(result["claims"]))
    assert saved["images"] == 60 and saved["N"] == 16
    hist = saved["locality_histogram"]
    assert len(hist["edges"]) == len(hist["hit"]) + 1 == len(hist["random"]) + 1
    assert sum(hist["hit"]) == sum(hist["random"]) == hist["patches"] > 0
    assert all(math.isfinite(v) for v in hist["edges"])
    for name in ("locality", "alpha", "beta"):
        path = paths[name]
        assert path.name == f"claims_{name}.png" and path.stat().st_size > 10_000
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 300
