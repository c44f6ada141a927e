"""The trained part's report (stages.trained_report): comparisons from planted student records,
held to a naive paired t interval, and rebuilt byte for byte by ``recompute``."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from PIL import Image
from scipy import stats

from helpers import cli
from winft_lightning.core import claims as C
from winft_lightning.stages import trained_report as R
from winft_lightning.study import recompute

ARMS = {  # family, alpha, beta -> top-1 of seed s = base + effect * s-dependent noise
    ("vit", 1.0, 0.0): 70.0,
    ("awd_vit", 0.1, 0.0): 72.0,
    ("awd_vit:random", 0.1, 0.0): 71.9,
    ("awd_dip_vit", 0.1, 0.2): 72.1,
    ("awd_dip_vit:random", 0.1, 0.2): 69.0,
    ("winft", 0.1, 0.0): 70.05,
}
NOISE = (0.31, -0.42, 0.17, 0.05)


def planted_rows() -> list[dict]:
    rows = []
    for k, ((family, alpha, beta), base) in enumerate(ARMS.items()):
        for seed, noise in enumerate(NOISE):
            rows.append({"family": family, "control": "random" if ":" in family else "",
                         "alpha": alpha, "beta": beta, "img_size": 32, "patch_size": 4,
                         "seed": seed, "status": "ok", "top1": base + noise * (k % 3 - 1) + 0.1 * k,
                         "eo": 100.0 * alpha, "eo_ratio": alpha, "num_patches": 64,
                         "fit_seconds": 140.0 + seed})  # fmt: skip
    rows.append({**rows[0], "seed": 9, "status": "failed", "top1": None})  # unpaired: ignored
    return rows


FACTS = {"machine": "Measured here.", "command": "python -m winft_lightning.study study=trained",
         "students": "the overrides `data.source.limit.train=5000`", "seeds": [0, 1, 2, 3],
         "teacher": "the claims teacher of seed 0", "wall": {"seconds": 3600.0, "starts": 1}}  # fmt: skip


def naive_t(deltas: list[float]) -> tuple[float, float, float]:
    n, mean = len(deltas), sum(deltas) / len(deltas)
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_comparisons_pair_by_seed_and_match_a_naive_t_interval(tmp_path):
    rows = planted_rows()
    comparisons = R.write_part(tmp_path / "trained", rows, FACTS)
    by_id = {c["id"]: c for c in comparisons}
    assert list(by_id) == ["T1", "T1'", "T2", "T2'", "T3"]
    top1 = {(r["family"], r["seed"]): r["top1"] for r in rows if r["status"] == "ok"}
    for cid, _, _, _, treated, control in R.TRAINED_CLAIMS:
        deltas = [(top1[treated[0], s] - top1[control[0], s]) / 100 for s in range(4)]
        row = by_id[cid]
        assert row["n"] == 4 and row["details"]["seeds"] == [0, 1, 2, 3]
        assert (row["effect"], row["low"], row["high"]) == pytest.approx(naive_t(deltas))
        assert row["seeds_above_zero"] == sum(d > 0 for d in deltas)
        interval = C.t_interval(deltas)
        assert row["verdict"] == C.margin_verdict(interval, 0.005)
        assert row["mde"] == pytest.approx(C.mde(interval)) and row["mde"] > 0
    # planted: T2' (about +3 pp, small spread) is supported
    assert by_id["T2'"]["verdict"] == C.SUPPORTED
    assert by_id["T1'"]["effect"] == pytest.approx(
        statistics.fmean((top1["awd_vit", s] - top1["awd_vit:random", s]) / 100 for s in range(4))
    )
    report = (tmp_path / "trained" / "report.md").read_text()
    for row in comparisons:
        assert f"{row['seeds_above_zero']} of {row['n']} | **{row['verdict']}** |" in report
    assert "60.0 min" in report and "AWD-ViT, random windows" in report
    assert f"T1 {by_id['T1']['mde'] * 100:.2f} pp against the paper's +0.70" in report
    with Image.open(tmp_path / "trained" / "trained_deltas.png") as im:
        assert im.format == "PNG" and min(im.size) > 300


def test_a_comparison_whose_arm_was_not_run_says_not_run(tmp_path):
    """study=quick runs no control arms and one seed: T1' and T2' say "not run" (no "+nan pp",
    no verdict); a comparison with one paired seed is run but has no interval: inconclusive."""
    rows = [r for r in planted_rows() if ":" not in r["family"] and r["seed"] in (0, 9)]
    comparisons = R.write_part(tmp_path / "trained", rows, FACTS)
    by_id = {c["id"]: c for c in comparisons}
    for cid in ("T1'", "T2'"):
        assert by_id[cid]["n"] == 0 and by_id[cid]["verdict"] == C.NOT_RUN
    assert by_id["T1"]["n"] == 1 and by_id["T1"]["verdict"] == C.INCONCLUSIVE
    report = (tmp_path / "trained" / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("| T1' |"))
    assert "| not run |" in line and line.endswith("0 of 0 | **not run** |") and "nan" not in line
    assert "pp (no interval)" in next(x for x in report.splitlines() if x.startswith("| T1 |"))


def test_recompute_rebuilds_the_trained_part_and_names_a_changed_record(tmp_path):
    saved = tmp_path / "report"
    R.write_part(saved / "trained", planted_rows(), FACTS)
    before = {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    same = recompute(saved, tmp_path / "rebuilt")
    assert same == {f"trained/{n}": True for n in
                    ("comparisons.json", "report.md", "trained_deltas.png")}  # fmt: skip
    assert {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before  # only read
    runs = saved / "trained" / "records" / "runs.csv"
    lines = runs.read_text().splitlines()
    cells = lines[1].split(",")
    cells[8] = str(float(cells[8]) + 1.0)  # one student's top-1
    runs.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    res = cli(f"recompute={saved}", module="winft_lightning.study", timeout=300, cwd=tmp_path)
    assert res.returncode != 0 and "trained/report.md" in res.stderr
    assert "trained/comparisons.json" in res.stderr
    assert json.loads((saved / "trained" / "facts.json").read_text()) == FACTS
