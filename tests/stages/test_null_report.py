"""SPEC 10's randomisation null as a part of the study's claims report (stages/null_report.py,
wired in by stages/study_parts.measure_claims): on a real tiny teacher and the digits, each
teacher's null records written after its pass and reused by their stamp, the trained variant
equal to the pass's own values, the report's section and claims.json's rows with the trained
and randomised effects side by side, and the report rebuilt from the records byte for byte."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from winft_lightning.core import claims as C
from winft_lightning.runtime.files import write_json_atomic
from winft_lightning.stages import claims_report as R
from winft_lightning.stages import null_report as NR
from winft_lightning.stages.null_claims import AGREEMENT, null_summary
from winft_lightning.stages.study_parts import measure_claims
from winft_lightning.stages.teachers import Teacher
from winft_lightning.study import recompute

SETTINGS = dict(alphas=[0.1, 0.5], keep_alphas=[0.1], betas=[0.25, 0.5, 0.75],
                locality_alpha=0.1, object_threshold=0.1, seed=0, limit=None, batch_size=32,
                num_workers=0, device="cpu", ties="key")  # fmt: skip
NULL = NR.null_spec({"limit": 32})  # one batch of the pass: its random U' draws too
U_ROWS = ["C1", "C1b", "keep/alpha=0.1", AGREEMENT]
VARIANTS = ["trained", "all", "cascade:1", "cascade:2"]  # TINY_NET has 2 blocks

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("claims_stage")]


def _teachers(ckpt, shards, seeds=(0, 1, 2)):
    from winft_lightning.runtime.hashing import file_sha256

    sha = file_sha256(ckpt)
    row = {"top1": 50.0, "fit_seconds": 3.0, "epochs": 1}
    return [Teacher(s, ckpt, sha, shards, row) for s in seeds]


@pytest.fixture(scope="module")
def null_part(claims_teacher, digits_shards, tmp_path_factory):
    """A claims dir of three teachers (the same weights under seeds 0..2, so that the null is
    pooled), measured and rebuilt by the study's own code (``measure_claims``, as
    ``run_claims`` calls it) with the randomisation null on the first 32 images."""
    out = tmp_path_factory.mktemp("null_part") / "claims"
    facts = measure_claims(_teachers(claims_teacher, digits_shards), SETTINGS, out, 2000, NULL)
    write_json_atomic(out / "facts.json", {**facts, "min_top1": 0.0})
    return out, R.rebuild(out)


def test_the_part_writes_the_null_records_and_the_report_section(null_part):
    out, result = null_part
    facts = json.loads((out / "facts.json").read_text())
    assert facts["null"]["settings"] == {"limit": 32, "modes": ["all", "cascade"], "depths": None}
    assert [p["seed"] for p in facts["null"]["passes"]] == [0, 1, 2]
    for p in facts["null"]["passes"]:
        assert p["variants"] == VARIANTS and p["images"] == 32 and p["blocks"] == 2
        stamp = json.loads((out / "records" / f"null_teacher_{p['seed']}.json").read_text())
        assert stamp == p and stamp["null"] == NULL and stamp["settings"] == SETTINGS
    cols = R.load_columns(out / "records" / "null_teacher_0.npz")
    assert {k.split("/")[0] for k in cols if k != "key"} == set(VARIANTS)
    assert all(len(v) == 32 for v in cols.values())
    assert facts["wall"]["null_seconds"] == round(
        sum(p["measure_seconds"] for p in facts["null"]["passes"]), 1
    )
    report = (out / "report.md").read_text()
    assert "## Randomisation null (SPEC 10)" in report and "measured apart" not in report
    assert "also measured on re-initialised teachers (below)" in report
    assert "randomisation null " in report.split("## Verdicts")[0]  # the wall time line
    section = report[report.index("## Randomisation null") : report.index("## The keep fraction")]
    assert (
        "| claim | margin | trained | all randomised | cascade:2 randomised | survives (all) |"
        in section
    )
    assert "| claim | trained | all | cascade:1 | cascade:2 |" in section
    for row in ("C1", "C1b", "keep/alpha=0.1", NR.RHO_NAME):
        assert sum(line.startswith(f"| {row} |") for line in section.splitlines()) == 2, row
    assert "is about the images, not about what the teacher learned" in section
    assert "The accuracy rows (C2, C3) are not measured on a random teacher" in section
    assert [r["id"] for r in result["null"]["rows"]] == U_ROWS


def test_the_trained_variant_is_the_pass_own_values(null_part):
    """The null reads the pass's images in its view, with its keys, tie rule and random U'
    stream: on the first batch every shared column equals the pass's record."""
    out, _ = null_part
    null = R.load_columns(out / "records" / "null_teacher_0.npz")
    pass_ = R.load_columns(out / "records" / "teacher_0.npz")
    assert list(null["key"]) == list(pass_["key"][:32])
    trained = {k.split("/", 1)[1]: v for k, v in null.items() if k.startswith("trained/")}
    shared = set(trained) & set(pass_)
    assert shared == set(trained) - {AGREEMENT}
    for name in sorted(shared):
        np.testing.assert_array_equal(trained[name], pass_[name][:32], err_msg=name)
    assert not np.array_equal(null["all/locality"], trained["locality"])


def test_null_rows_carry_the_trained_and_randomised_effects_side_by_side(null_part):
    out, result = null_part
    saved = json.loads((out / "claims.json").read_text())
    assert saved["null"] == json.loads(json.dumps(result["null"]))
    records = NR.load_null(out, json.loads((out / "facts.json").read_text())["null"])
    want = null_summary(records[0], SETTINGS, 16, resamples=2000, seed=0)
    for row in saved["null"]["rows"]:
        assert list(row["variants"]) == VARIANTS
        for v, cell in row["variants"].items():
            assert set(cell["teachers"]) == {"0", "1", "2"}
            for teacher in cell["teachers"].values():  # the same weights under every seed
                assert teacher == pytest.approx(want[v][row["id"]], nan_ok=True), (row["id"], v)
            pooled, one = cell["pooled"], want[v][row["id"]]
            assert pooled["k"] == 3 and pooled["tau2"] == 0.0
            assert pooled["effect"] == pytest.approx(one["effect"])  # K equal teachers
            if row["margin"] is None:
                assert pooled["verdict"] is None and row["survives"] is None
            else:
                assert pooled["verdict"] == C.margin_verdict(
                    C.Interval(pooled["effect"], pooled["low"], pooled["high"], 3, ""),
                    row["margin"],
                )
        if row["margin"] is not None:
            verdict = row["variants"]["all"]["pooled"]["verdict"]
            assert row["survives"] == {C.SUPPORTED: "yes", C.NEGLIGIBLE: "no",
                                       C.CONTRADICTED: "no"}.get(verdict, "undecided")  # fmt: skip
    c1 = next(r for r in saved["null"]["rows"] if r["id"] == "C1")
    assert (
        c1["variants"]["trained"]["pooled"]["effect"] != c1["variants"]["all"]["pooled"]["effect"]
    )
    line = next(
        x for x in (out / "report.md").read_text().splitlines() if x.startswith("| C1 | 0.100 |")
    )
    p = c1["variants"]["all"]["pooled"]
    assert f"| {p['effect']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] **{p['verdict']}** |" in line


def test_a_second_start_reuses_the_null_by_its_stamp(null_part, claims_teacher, digits_shards,
                                                     tmp_path):  # fmt: skip
    out, _ = null_part
    claims = tmp_path / "claims"
    shutil.copytree(out, claims)
    records = claims / "records"
    before = {p.name: p.stat().st_mtime_ns for p in records.iterdir()}
    facts = measure_claims(_teachers(claims_teacher, digits_shards), SETTINGS, claims, 2000, NULL)
    assert {p.name: p.stat().st_mtime_ns for p in records.iterdir()} == before
    saved = json.loads((out / "facts.json").read_text())
    assert facts["null"] == saved["null"] and facts["passes"] == saved["passes"]
    # another subset is another null: measured again, the pass kept
    (teacher,) = _teachers(claims_teacher, digits_shards, seeds=(0,))
    again = NR.measure_null(teacher, SETTINGS, NR.null_spec({"limit": 8, "modes": ["all"]}), claims)
    assert again["images"] == 8 and again["variants"] == ["trained", "all"]
    assert (records / "null_teacher_0.npz").stat().st_mtime_ns != before["null_teacher_0.npz"]
    assert (records / "teacher_0.npz").stat().st_mtime_ns == before["teacher_0.npz"]


def test_recompute_rebuilds_the_report_with_the_null_byte_for_byte(null_part, tmp_path):
    out, _ = null_part
    saved = tmp_path / "report"
    shutil.copytree(out, saved / "claims")
    same = recompute(saved, tmp_path / "rebuilt")
    assert same["claims/report.md"] and same["claims/claims.json"] and all(same.values()), same
    (saved / "claims" / "records" / "null_teacher_2.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"null_teacher_2\.npz"):
        R.rebuild(saved / "claims")


def test_below_three_teachers_each_teacher_cell_is_shown(null_part):
    """With K = 2 no cell is pooled (SPEC 10): the section shows each teacher's interval and
    verdict, and whether an effect survives is the teachers' common verdict."""
    out, _ = null_part
    facts = json.loads((out / "facts.json").read_text())
    null = {**facts["null"], "passes": facts["null"]["passes"][:2]}
    result = NR.null_result(NR.load_null(out, null), SETTINGS, 16, resamples=2000, seed=0)
    c1 = next(r for r in result["rows"] if r["id"] == "C1")
    assert c1["variants"]["all"]["pooled"]["verdict"] == "no headline verdict (K = 2 < 3)"
    common = C.common_verdict([c["verdict"] for c in c1["variants"]["all"]["teachers"].values()])
    assert c1["survives"] == {C.SUPPORTED: "yes", C.NEGLIGIBLE: "no"}.get(common, "undecided")
    lines = NR.null_markdown(result, null)
    line = next(x for x in lines if x.startswith("| C1 | 0.100 |"))
    assert line.count("no headline verdict (K = 2 < 3); per teacher: ") == 3
    effects = [c["effect"] for c in c1["variants"]["trained"]["teachers"].values()]
    assert any(x.startswith(f"| C1 | {effects[0]:+.3f} / {effects[1]:+.3f} |") for x in lines)


def test_a_report_without_the_null_says_so(null_part):
    """Facts whose ``null`` is None (``study.claims.randomisation_null: null``) say the null did
    not run; facts without the key (the reports made before it) keep their words."""
    out, result = null_part
    facts = json.loads((out / "facts.json").read_text())
    without = {k: v for k, v in result.items() if k != "null"}
    report = R.report_markdown(without, {**facts, "null": None})
    assert (
        "`study.claims.randomisation_null` was null" in report
        and "## Randomisation null" not in report
    )
    del facts["null"], facts["wall"]["null_seconds"]
    report = R.report_markdown(without, facts)
    assert "the randomisation null (`stages.null_claims`), which is measured apart" in report
    assert "randomisation null " not in report.split("## Verdicts")[0]
    with pytest.raises(ValueError, match="unknown keys"):
        NR.null_spec({"limt": 5})
