"""The committed claims report (docs/results/) is what its records say: rebuilt from its saved
per-image values it gives the same claims.json and report.md, and docs/results.md quotes its
verdicts."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from winft_lightning.stages.claims_report import verdict_moves
from winft_lightning.stages.trained_report import sign_flip_cell
from winft_lightning.study import recompute

ROOT = REPO
LATEST = ROOT / "docs" / "results" / "2026-12-07_study_claims"  # K = 5 (SPEC 10)
REPORT = ROOT / "docs" / "results" / "2026-12-02_study_claims"  # K = 3, the paper grid's N = 64
RESULTS_MD = ROOT / "docs" / "results.md"  # the page that quotes the committed reports
# each claims report and the results.md section that quotes its headline table
SECTIONS = {LATEST: "### Latest measured: the training-free claims",
            REPORT: "### Earlier: the training-free claims"}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("report", list(SECTIONS), ids=lambda p: p.name)
def test_the_committed_claims_report_rebuilds_from_its_records(report, tmp_path):
    same = recompute(report, tmp_path)  # what `recompute=` runs: records and facts alone
    assert same and all(same.values()), [k for k, v in same.items() if not v]
    assert same["claims/claims.json"] and same["claims/report.md"]
    rebuilt = tmp_path / report.name / "claims"
    saved = report / "claims"
    assert {p.name for p in rebuilt.glob("*.png")} == {p.name for p in saved.glob("*.png")}


@pytest.mark.parametrize("report", list(SECTIONS), ids=lambda p: p.name)
def test_results_page_quotes_the_committed_verdicts(report):
    claims = json.loads((report / "claims" / "claims.json").read_text())
    page = RESULTS_MD.read_text()
    section = page[page.index(SECTIONS[report]) :]
    for row in (r for r in claims["claims"] if r["headline"]):
        line = next(x for x in section.splitlines() if x.startswith(f"| {row['id']} |"))
        assert line.endswith(f"**{row['verdict']}** |"), line
        for cell in row["teachers"].values():
            assert f"→ {cell['verdict']}" in line


def test_the_k5_report_has_every_declared_teacher_and_its_null():
    """SPEC 10: the K = 5 teachers declared in conf/study/full.yaml, each with its pass on the
    first 5,000 test images and its randomisation null on 500 of them."""
    facts = json.loads((LATEST / "claims" / "facts.json").read_text())
    assert [p["seed"] for p in facts["passes"]] == [0, 1, 2, 3, 4]
    assert all(p["images"] == 5000 and p["N"] == 64 for p in facts["passes"])
    assert [p["seed"] for p in facts["null"]["passes"]] == [0, 1, 2, 3, 4]
    assert all(p["images"] == 500 for p in facts["null"]["passes"])


def test_results_page_quotes_the_imagenet_projection_the_code_gives():
    from bench.claims_projection import BENCH, project

    p = project(json.loads(BENCH.read_text()))
    page = " ".join(RESULTS_MD.read_text().split())
    assert f"the pass's {p['forwards_per_image']} forwards an image" in page
    per_forward = json.loads(BENCH.read_text())["analysis"]["b16_224"]
    assert f"forward ({per_forward['teacher_forward_nonfused_s_per_image'] * 1000:.2f} ms" in page
    assert f"**about {p['minutes']:.0f} min** for the 50,000 val images on one H100" in page


# each trained report and the results.md section that quotes its table: the latest (masks
# from two local-family teachers, SPEC 10's rows) and the one it follows (one default teacher)
TRAINED = {ROOT / "docs" / "results" / "2026-12-07_study_trained":
               "### Latest measured: the trained comparisons",
           ROOT / "docs" / "results" / "2026-12-02_study_trained":
               "### Earlier: the trained comparisons"}  # fmt: skip


@pytest.mark.parametrize("report", list(TRAINED), ids=lambda p: p.name)
def test_the_committed_trained_report_rebuilds_from_its_records(report, tmp_path):
    same = recompute(report, tmp_path)
    assert same["trained/comparisons.json"] and same["trained/report.md"]


@pytest.mark.parametrize("report", list(TRAINED), ids=lambda p: p.name)
def test_results_page_quotes_the_committed_trained_verdicts(report):
    rows = json.loads((report / "trained" / "comparisons.json").read_text())
    section = _section(TRAINED[report])
    for row in rows:
        line = next(x for x in section.splitlines() if x.startswith(f"| {row['id']} |"))
        assert line.endswith(f"{row['seeds_above_zero']} of {row['n']} | **{row['verdict']}** |")
        assert (
            f"{row['effect'] * 100:+.2f} pp [{row['low'] * 100:+.2f}, {row['high'] * 100:+.2f}]"
            in line
        )
        assert f"| {sign_flip_cell(row)} |" in line  # SPEC 10: the exact p beside the interval


def test_the_latest_trained_report_has_spec10s_rows_and_two_local_teachers():
    """Issue 33: T1-T3 with SPEC 9's and SPEC 10's controls and WinfT at beta 0.2, each with its
    interval, exact p and MDE; the masks from two teachers of the local family."""
    latest = next(iter(TRAINED))
    rows = json.loads((latest / "trained" / "comparisons.json").read_text())
    assert [r["id"] for r in rows] == ["T1", "T1'", "T1''", "T2", "T2'", "T2''", "T3", "T3b"]
    assert all(r["n"] == 4 and r["mde"] > 0 and 0 < r["sign_flip_p"] <= 1 for r in rows)
    facts = json.loads((latest / "trained" / "facts.json").read_text())
    assert "`teacher.attn_bias=distance`" in facts["teacher"]
    assert "seeds 0, 2: the claims teacher of seed 0" in facts["teacher"]
    assert "seeds 1, 3: the claims teacher of seed 1" in facts["teacher"]
    wall = f"**{facts['wall']['seconds'] / 60:.1f} min**"
    assert wall in _section(TRAINED[latest])


PAPER_GRID = ROOT / "docs" / "results" / "2026-12-02_study_paper_grid"


def test_the_committed_paper_grid_report_rebuilds_from_its_records(tmp_path):
    same = recompute(PAPER_GRID, tmp_path)
    assert same and all(same.values()), [k for k, v in same.items() if not v]
    assert same["claims/claims.json"] and same["claims/report.md"]
    facts = json.loads((PAPER_GRID / "claims" / "facts.json").read_text())
    # the two teachers of conf/study/paper_grid.yaml, both at N = 196
    assert [(p["seed"], p["N"]) for p in facts["passes"]] == [(0, 196), (1, 196)]
    assert all(p["images"] == 1000 for p in facts["passes"])
    # every run counts (SPEC 10): the run this one replaced (68465a6, three teachers of 4
    # epochs) is kept beside it and rebuilt too
    assert same["claims_4ep/claims.json"] and same["claims_4ep/report.md"]
    earlier = json.loads((PAPER_GRID / "claims_4ep" / "facts.json").read_text())
    assert [(p["seed"], p["N"]) for p in earlier["passes"]] == [(0, 196), (1, 196), (2, 196)]


def test_results_page_quotes_the_paper_grid_beside_n64_and_its_teachers():
    here = json.loads((PAPER_GRID / "claims" / "claims.json").read_text())
    there = json.loads((REPORT / "claims" / "claims.json").read_text())
    rows = {r["id"]: r for r in there["claims"] if r["headline"]}
    page = RESULTS_MD.read_text()
    section = page[page.index("### Earlier: the claims at the paper's grid") :]
    for row in (r for r in here["claims"] if r["headline"]):
        line = next(x for x in section.splitlines() if x.startswith(f"| {row['id']} |"))
        ref = rows[row["id"]]
        moves = "yes" if verdict_moves(row, ref) else "no"
        assert line == f"| {row['id']} | {ref['verdict']} | **{row['verdict']}** | {moves} |"
    facts = json.loads((PAPER_GRID / "claims" / "facts.json").read_text())
    seeds = [p["seed"] for p in facts["passes"]]
    whole = [json.loads((PAPER_GRID / "teachers_whole_test" / f"teacher_{s}.json").read_text())
             for s in seeds]  # fmt: skip
    assert all(r["num_patches"] == 196 for r in whole)
    top1 = [f"{r['top1']:.2f}" for r in whole]
    assert f"{', '.join(top1[:-1])} and {top1[-1]} %" in " ".join(section.split())
    minutes = (facts["wall"]["teachers_seconds"] + facts["wall"]["passes_seconds"]) / 60
    assert f"**Wall time: {minutes:.1f} min**" in section


PAPER_GRID_K3 = ROOT / "docs" / "results" / "2026-12-07_study_paper_grid"  # SPEC 10: K = 3


def test_the_k3_paper_grid_report_rebuilds_and_has_every_declared_teacher(tmp_path):
    """The K = 3 teachers conf/study/paper_grid.yaml declares, each at N = 196 with its pass on
    the seeded 1,000-image subset and its randomisation null, every one in the report whatever
    its top-1 (a bar is a sensitivity split); rebuilt byte for byte from the records."""
    same = recompute(PAPER_GRID_K3, tmp_path)
    assert same and all(same.values()), [k for k, v in same.items() if not v]
    assert same["claims/claims.json"] and same["claims/report.md"]
    assert same["claims_local/claims.json"] and same["claims_local/report.md"]  # both families
    facts = json.loads((PAPER_GRID_K3 / "claims" / "facts.json").read_text())
    assert [(p["seed"], p["N"], p["images"]) for p in facts["passes"]] == [
        (0, 196, 1000), (1, 196, 1000), (2, 196, 1000)]  # fmt: skip
    assert [p["seed"] for p in facts["null"]["passes"]] == [0, 1, 2]
    below = [p["seed"] for p in facts["passes"] if p["teacher_row"]["top1"] < facts["min_top1"]]
    claims = json.loads((PAPER_GRID_K3 / "claims" / "claims.json").read_text())
    assert all(set(r["teachers"]) == {"0", "1", "2"} for r in claims["claims"] if r["headline"])
    assert below == [1]  # and still in every row above


def test_results_page_quotes_the_k3_paper_grid_beside_n64():
    here = json.loads((PAPER_GRID_K3 / "claims" / "claims.json").read_text())
    there = json.loads((LATEST / "claims" / "claims.json").read_text())
    section = _section("### Latest measured: the claims at the paper's grid")
    _assert_pooled_side_by_side(section, here, there)
    facts = json.loads((PAPER_GRID_K3 / "claims" / "facts.json").read_text())
    text = " ".join(section.split())
    _assert_quotes_whole_split_top1(text, _whole_split("teachers_whole_test", facts))
    fits = [f"{p['teacher_row']['fit_seconds'] / 60:.1f}" for p in facts["passes"]]
    assert f"fitted in {', '.join(fits[:-1])} and {fits[-1]} min" in text
    w = facts["wall"]
    minutes = (w["teachers_seconds"] + w["passes_seconds"] + w["null_seconds"]) / 60
    assert f"**Wall time: {minutes:.1f} min**" in section


def _whole_split(folder: str, facts: dict) -> list[dict]:
    """Each of ``facts``' teachers' results on the whole test split
    (``PAPER_GRID_K3/<folder>/teacher_<seed>.json``), every one at N = 196."""
    rows = [json.loads((PAPER_GRID_K3 / folder / f"teacher_{p['seed']}.json").read_text())
            for p in facts["passes"]]  # fmt: skip
    assert all(r["num_patches"] == 196 for r in rows)
    return rows


def _assert_quotes_whole_split_top1(text: str, rows: list[dict]) -> None:
    """``text`` (whitespace collapsed) lists the teachers' whole-split top-1s, in seed order."""
    top1 = [f"{r['top1']:.2f}" for r in rows]
    assert f"{', '.join(top1[:-1])} and {top1[-1]} % top-1 on the whole test split" in text


def _pooled_cell(row: dict) -> str:
    """A headline row's pooled effect and simultaneous interval, in the row's unit."""
    p, unit = row["pooled"], row.get("unit", "")
    fmt = (lambda v: f"{v * 100:+.2f}") if unit == "pp" else (lambda v: f"{v:+.3f}")
    return f"{fmt(p['effect'])} [{fmt(p['low'])}, {fmt(p['high'])}]" + (f" {unit}" if unit else "")


def _section(title: str) -> str:
    """results.md's section that starts with ``title``, up to the next ``###`` heading."""
    page = RESULTS_MD.read_text()
    section = page[page.index(title) :]
    return section[: section.index("\n### ", 1)]


def _assert_pooled_side_by_side(section: str, here: dict, there: dict) -> None:
    """Each headline row of ``here`` is a line of ``section``: ``there``'s pooled cell and
    verdict, then ``here``'s, and whether the verdict moves (:func:`verdict_moves`)."""
    rows = {r["id"]: r for r in there["claims"] if r["headline"]}
    for row in (r for r in here["claims"] if r["headline"]):
        ref = rows[row["id"]]
        moves = "yes" if verdict_moves(row, ref) else "no"
        assert (f"| {row['id']} | {_pooled_cell(ref)} → {ref['verdict']} | {_pooled_cell(row)} "
                f"→ **{row['verdict']}** | {moves} |") in section.splitlines(), row["id"]  # fmt: skip


def test_results_page_quotes_the_two_families_side_by_side():
    """Issue 33: the local family's K = 5 teachers (claims_local/) beside the default family's
    (claims/) of the same study, each headline row's pooled effect, interval and verdict, and
    whether the verdict moves; per block, the heads at or below the 5x5 reference."""
    default = json.loads((LATEST / "claims" / "claims.json").read_text())
    local = json.loads((LATEST / "claims_local" / "claims.json").read_text())
    facts = json.loads((LATEST / "claims_local" / "facts.json").read_text())
    assert [p["seed"] for p in facts["passes"]] == [0, 1, 2, 3, 4]
    assert all(p["teacher"]["net"]["attn_bias"] == "distance" for p in facts["passes"])
    section = _section("### Latest measured: the two teacher families")
    _assert_pooled_side_by_side(section, local, default)
    _assert_heads_per_block(section, {"default": default, "local": local})


def _assert_heads_per_block(section: str, families: dict[str, dict], sizes=(5,)) -> None:
    """Per family and block, ``section`` states how many heads (over the family's teachers)
    attend at or below each ``sizes`` x ``sizes`` reference, one column a size, by the
    project's own attention-distance function."""
    from winft_lightning.core.attention_distance import uniform_attention_distance

    for name, result in families.items():
        refs = [uniform_attention_distance(tuple(result["grid"]), k) for k in sizes]
        for b in range(len(result["attention_profile"]["0"]["blocks"])):
            heads = [h for t in result["attention_profile"].values() for h in t["blocks"][b]]
            cells = " | ".join(f"{sum(h <= r for h in heads)} of {len(heads)}" for r in refs)
            assert f"| {name} | {b} | {cells} |" in section, (name, b)


def test_results_page_quotes_the_two_families_at_the_paper_grid():
    """Issue 33 at N = 196: the local family's K = 3 teachers (claims_local/) beside the
    default family's (claims/) of study=paper_grid, row for row, with the heads per block at or
    below the 5x5 reference and each local teacher's whole-split top-1."""
    default = json.loads((PAPER_GRID_K3 / "claims" / "claims.json").read_text())
    local = json.loads((PAPER_GRID_K3 / "claims_local" / "claims.json").read_text())
    facts = json.loads((PAPER_GRID_K3 / "claims_local" / "facts.json").read_text())
    assert [(p["seed"], p["N"], p["images"]) for p in facts["passes"]] == [
        (0, 196, 1000), (1, 196, 1000), (2, 196, 1000)]  # fmt: skip
    assert [p["seed"] for p in facts["null"]["passes"]] == [0, 1, 2]
    assert all(p["teacher"]["net"]["attn_bias"] == "distance" for p in facts["passes"])
    section = _section("### Latest measured: the paper's grid, the two teacher families")
    _assert_pooled_side_by_side(section, local, default)
    _assert_heads_per_block(section, {"default": default, "local": local}, sizes=(5, 7))
    whole = _whole_split("teachers_whole_test_local", facts)
    _assert_quotes_whole_split_top1(" ".join(section.split()), whole)


def test_the_paper_grid_readme_gives_each_local_teachers_top1_and_fit():
    """The dated dir's README quotes, per local teacher, its whole-split and subset top-1 and
    its fit time as the part's records give them."""
    facts = json.loads((PAPER_GRID_K3 / "claims_local" / "facts.json").read_text())
    readme = (PAPER_GRID_K3 / "README.md").read_text().splitlines()
    whole_split = _whole_split("teachers_whole_test_local", facts)
    for p, whole in zip(facts["passes"], whole_split, strict=True):
        row = p["teacher_row"]
        cells = (f"| {p['seed']} | {whole['top1']:.2f} | {row['top1']:.2f} | "
                 f"{row['fit_seconds'] / 60:.1f}")  # fmt: skip
        assert any(line.replace("**", "").startswith(cells) for line in readme), cells
