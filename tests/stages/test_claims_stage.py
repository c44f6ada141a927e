"""The claims pass and its report (stages/claims.py, stages/claims_report.py,
core/claims_table.py, figures/claims.py) end to end on a real digits shard set and a tiny
teacher trained here for a few seconds: every row's verdict recomputed by SPEC 9's rule from
its interval, accuracies against plain forward loops, seeded draws, the records reused by their
stamp, and the report rebuilt from the records byte for byte."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from helpers import TINY_NET, cli
from winft_lightning.core import baselines as B
from winft_lightning.core import claims as C
from winft_lightning.core import claims_table as T
from winft_lightning.core.analysis import analyze
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.models import awd_attn_mask, build_vit
from winft_lightning.models.teacher import load_teacher, teacher_norm
from winft_lightning.runtime.files import write_json_atomic
from winft_lightning.stages import claims_report as R
from winft_lightning.stages.claims import collect_claims, keep_chance
from winft_lightning.stages.teachers import Teacher
from winft_lightning.study import recompute

MEAN, STD = [0.3053] * 3, [0.3759] * 3
SETTINGS = dict(alphas=[0.1, 0.5], keep_alphas=[0.1], betas=[0.25, 0.5, 0.75],
                locality_alpha=0.1, object_threshold=0.1, seed=0, limit=None, batch_size=32,
                num_workers=0, device="cpu")  # fmt: skip


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("claims_stage")]


@pytest.fixture(scope="module")
def teacher(claims_teacher):
    """A tiny teacher (helpers.TINY_NET, N = 16) trained for 150 steps on the 200 training
    digits, saved as the pipeline's Lightning checkpoint (with its normalisation):
    conftest's ``claims_teacher``, shared with the randomisation null's tests."""
    return claims_teacher


@pytest.fixture(scope="module")
def part(teacher, digits_shards, tmp_path_factory):
    """A claims dir of two teachers (the same weights under seeds 0 and 1, so that the verdict
    combination runs), written as the study writes it."""
    from winft_lightning.runtime.hashing import file_sha256

    out = tmp_path_factory.mktemp("claims_part") / "claims"
    sha = file_sha256(teacher)
    row = {"top1": 50.0, "fit_seconds": 3.0, "epochs": 1}
    passes = [R.measure_teacher(Teacher(s, teacher, sha, digits_shards, row), SETTINGS, out)
              for s in (0, 1)]  # fmt: skip
    chance = {"paper": keep_chance((14, 14), 0.1, images=16), "here": keep_chance((4, 4), 0.1)}
    facts = R.part_facts(passes, SETTINGS, 2000, "Measured here.", "python -m test", chance,
                         6.0, sum(p["measure_seconds"] for p in passes))  # fmt: skip
    write_json_atomic(out / "facts.json", facts)
    return out, R.rebuild(out)


def test_every_row_has_the_verdict_spec9_gives_its_interval(part):
    out, result = part
    columns = R.load_columns(out / "records" / "teacher_0.npz")
    n = len(columns["key"])
    assert n == 60 and all(len(v) == n for v in columns.values())
    specs = T.row_specs(SETTINGS, 16)
    assert [r["id"] for r in result["claims"]] == [s.id for s in specs]
    headline = [r["id"] for r in result["claims"] if r["headline"]]
    # SPEC 10's C3 headline: DIP vs rollout and vs random; the paper's beta 0.2 was not run
    assert headline == ["C1", "C1b", "keep/alpha=0.1", "C2/random/alpha=0.1",
                        "C2/centred/alpha=0.1", "C3/rollout", "C3/random",
                        "C3/random/beta=0.2", "C3/rollout/beta=0.2", "C3/free/beta=0.2"]  # fmt: skip
    not_run = {r["id"] for r in result["claims"] if r["verdict"] == C.NOT_RUN}
    assert not_run == {f"C3/{o}/beta={b:g}" for o in ("random", "rollout", "free")
                       for b in T.STEP_BETAS}  # fmt: skip
    for row, spec in zip(result["claims"], specs, strict=True):
        if row["id"] in not_run:
            continue
        values = spec.effect(columns)
        finite = values[np.isfinite(values)]
        want = C.paired_bootstrap_ci(finite, resamples=2000, seed=0)
        for cell in row["teachers"].values():  # both teachers have the same weights
            assert cell["n"] + cell["skipped"] == n, row["id"]
            assert (cell["effect"], cell["low"], cell["high"]) == (
                want.estimate,
                want.low,
                want.high,
            )
            assert cell["verdict"] == T.RULES[spec.rule](want, spec.margin), row["id"]
            assert cell["mde"] == pytest.approx(2.8 * want.se)
        common = C.common_verdict([c["verdict"] for c in row["teachers"].values()])
        assert row["teacher_verdicts"] == common  # the per-teacher detail
        assert row["verdict"] == row["pooled"]["verdict"] == "no headline verdict (K = 2 < 3)"
        assert row["margin"] == spec.margin
    c1b = next(r for r in result["claims"] if r["id"] == "C1b")
    assert c1b["margin"] == pytest.approx(0.05 * 16)
    table = T.claims_markdown(result)
    assert table.count("\n| ") == len(headline)  # a line a row below the header
    assert "C3 baselines against random (rows C3/baseline/*, SPEC 10): " in table


def test_accuracies_equal_plain_forward_loops(part, teacher, digits_shards):
    """Unrestricted top-1 from the timm teacher; AWD(0.1) through timm's attn_mask path and
    DIP(0.5) lowest-first / blank highest-first (its ties broken by each image's key, SPEC 10)
    through a separately built DIP network, on another batching: each equals the saved
    per-image column."""
    out, _ = part
    cols = R.load_columns(out / "records" / "teacher_0.npz")
    model, info = load_teacher(teacher)
    awd = build_vit(**TINY_NET, attn="awd", checkpoint=str(teacher)).eval()
    dip = build_vit(**TINY_NET, dip="multiply", checkpoint=str(teacher)).eval()
    got = {"full": [], "awd": [], "variance": [], "blank": []}
    dm = ShardDataModule(digits_shards, batch_size=7, num_workers=0, img_size=16,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), hflip=False)  # fmt: skip
    with torch.no_grad():
        for batch in dm.make_loader("test", rank=0, world_size=1):  # another batching
            x01, y = batch["image"], batch["label"]
            x = TF.normalize(x01, MEAN, STD)  # as the pass: 0..1 pixels, then normalised
            got["full"].append(model(x).argmax(-1) == y)
            res = analyze(model, x, (0.1,), info.grid)
            mask = awd_attn_mask(res.windows[0.1], info.grid, 1)
            got["awd"].append(awd(x, attn_mask=mask).argmax(-1) == y)
            keep = B.drop_lowest(res.order, 0.5)
            got["variance"].append(dip(x, keep=keep).argmax(-1) == y)
            ties = B.tie_permutations([B.key_seed(k, 0) for k in batch["key"]], 16)
            blank = B.ascending_order(B.blank_scores(x01, info.grid), ties)
            got["blank"].append(dip(x, keep=B.drop_highest(blank, 0.5)).argmax(-1) == y)
    names = {"full": "correct:full", "awd": "correct:awd:0.1",
             "variance": "correct:variance:lowest:0.5", "blank": "correct:blank:highest:0.5"}  # fmt: skip
    for k, name in names.items():
        assert np.array_equal(torch.cat(got[k]).numpy(), cols[name]), k
    assert cols["correct:full"].mean() > 0.3  # a real, if tiny, teacher: chance is 0.1


def test_draws_follow_the_seed(teacher, digits_shards):
    small = {**SETTINGS, "alphas": [0.1], "betas": [0.5], "limit": 40}

    def run(seed):
        return collect_claims(teacher, digits_shards, **{**small, "seed": seed})[0]

    def same(x, y):
        return np.array_equal(x, y, equal_nan=x.dtype.kind == "f")

    a, b, other = run(0), run(0), run(1)
    assert a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    random = ("locality_null", "gap_null", "kept_null:0.1")
    assert any(not same(a[k], other[k]) for k in random)
    fixed = ("locality", "gap", "kept:0.1", "correct:awd:0.1", "correct:variance:lowest:0.5")
    assert all(same(a[k], other[k]) for k in fixed)
    assert list(a["key"]) == list(other["key"]) and len(a["key"]) == 40


def test_records_are_reused_by_their_stamp(part, teacher, digits_shards):
    out, _ = part
    npz = out / "records" / "teacher_0.npz"
    before = npz.stat().st_mtime_ns
    t = Teacher(0, teacher, json.loads((out / "records" / "teacher_0.json").read_text())[
        "teacher_sha256"], digits_shards, None)  # fmt: skip
    facts = R.measure_teacher(t, SETTINGS, out)
    assert npz.stat().st_mtime_ns == before and facts["seed"] == 0


def test_recompute_rebuilds_the_report_byte_for_byte(part, tmp_path):
    out, _ = part
    saved = tmp_path / "report"  # a report dir as committed: the claims part under claims/
    shutil.copytree(out, saved / "claims")
    before = {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    res = cli(f"recompute={saved}", module="winft_lightning.study", timeout=300,
              cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "7 of 7 saved files identical" in res.stdout
    rebuilt = tmp_path / "outputs" / "recompute" / "report" / "claims"
    built = {p.name: p.read_bytes() for p in (saved / "claims").iterdir()
             if p.is_file() and p.name != "facts.json"}  # fmt: skip
    assert {"report.md", "claims.json", "claims_verdicts.png", "claims_c2.png",
            "claims_c3_difference.png", "claims_c3_curves.png",
            "claims_attention_distance.png"} <= set(built)  # fmt: skip
    assert {name: (rebuilt / name).read_bytes() for name in built} == built
    assert {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before  # only read
    for png in rebuilt.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and min(im.size) > 300
    report = built["report.md"].decode()
    assert "| 0 | 50.00 | 1 |" in report and "N = 196" in report
    assert "## Mean attention distance" in report
    profile = json.loads(built["claims.json"])["attention_profile"]
    assert set(profile) == {"0", "1"} and len(profile["0"]["blocks"]) == TINY_NET["depth"]
    assert all(len(b) == TINY_NET["num_heads"] for b in profile["0"]["blocks"])
    # per block, the heads of every teacher at or below the 5x5 reference (issue 33), counted
    # here from the profile: mean distance of uniform attention over a 5x5 patch neighbourhood
    from winft_lightning.core.attention_distance import uniform_attention_distance

    grid = json.loads(built["claims.json"])["grid"]
    five = uniform_attention_distance(tuple(grid), 5)
    section = report.split("## Mean attention distance")[1].split("\n## ")[0]
    for b in range(TINY_NET["depth"]):
        heads = [h for s in ("0", "1") for h in profile[s]["blocks"][b]]
        near = sum(h <= five for h in heads)
        row = next(line for line in section.splitlines() if line.startswith(f"| {b} | "))
        assert row.endswith(f" | {near} of {len(heads)} ({near / len(heads):.0%}) |"), row
    # a changed value is caught, and a missing record is named
    records = saved / "claims" / "records"
    cols = R.load_columns(records / "teacher_1.npz")
    cols["correct:full"] = ~cols["correct:full"]
    R.save_columns(records / "teacher_1.npz", cols)
    same = recompute(saved, tmp_path / "again")
    assert not same["claims/report.md"] and not same["claims/claims.json"]
    (records / "teacher_1.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"teacher_1\.npz"):
        R.rebuild(saved / "claims")


def test_a_teacher_below_the_accuracy_bar_stays_and_is_split(part, tmp_path):
    """SPEC 10: the recipe's min_top1 does not filter. A part whose teacher 1 falls below it
    keeps both teachers in every row, marks teacher 1 in its table, and pools the headline
    again without it in a sensitivity section; a bar every teacher reached says so."""
    out, full = part
    claims = tmp_path / "claims"
    shutil.copytree(out, claims)
    facts = json.loads((claims / "facts.json").read_text())
    facts["passes"][1]["teacher_row"]["top1"] = 40.0
    write_json_atomic(claims / "facts.json", {**facts, "min_top1": 45.0})
    result = R.rebuild(claims)
    bar = result["accuracy_bar"]
    assert bar["min_top1"] == 45.0 and bar["below"] == [1]
    assert [r["teachers"].keys() for r in result["claims"]] == [
        r["teachers"].keys() for r in full["claims"]]  # fmt: skip
    headline = [r["id"] for r in result["claims"] if r["headline"]]
    assert [r["id"] for r in bar["rows"]] == headline and {r["k"] for r in bar["rows"]} == {1}
    report = (claims / "report.md").read_text()
    assert "| 1 | 40.00 (below the bar) |" in report
    assert "## Sensitivity: the accuracy bar (45 % top-1)" in report
    assert report.count("| K = 2: ") == len(headline)
    write_json_atomic(claims / "facts.json", {**facts, "min_top1": 30.0})
    again = R.rebuild(claims)
    assert again["accuracy_bar"] == {"min_top1": 30.0, "below": [], "rows": []}
    assert "Every teacher reached the bar" in (claims / "report.md").read_text()


def test_keep_chance_is_the_same_code_on_a_structureless_u():
    paper = keep_chance((14, 14), 0.1, images=16)
    assert 0.85 < paper["mean"] < 0.97 and paper["N"] == 196  # SPEC 9: about 93 % at N = 196
    here = keep_chance((8, 8), 0.1, images=16)
    assert 0.6 < here["mean"] < paper["mean"]


def test_forwards_per_image_counts_the_pass(teacher, digits_shards, monkeypatch):
    """The projection's multiplier is the pass's own count: every forward but the analysis's
    goes through claims.per_image_correct or, for C3's DIP network, models.dropped.forward_kept
    (wrapped here, not replaced)."""
    from winft_lightning.stages import claims as stage

    calls = []

    def counting(real):
        def counted(net, x, *args, **kw):
            calls.append(x.shape[0])
            return real(net, x, *args, **kw)

        return counted

    monkeypatch.setattr(C, "per_image_correct", counting(C.per_image_correct))
    monkeypatch.setattr(stage, "forward_kept", counting(stage.forward_kept))  # C3's DIP forwards
    alphas, betas = [0.1, 0.2], [0.5]
    collect_claims(teacher, digits_shards, **{**SETTINGS, "alphas": alphas, "keep_alphas": [0.1],
                                              "betas": betas, "limit": 20, "batch_size": 20})  # fmt: skip
    assert len(calls) + 1 == stage.forwards_per_image(alphas, betas) == 2 + 6 + 2 * 5
    assert set(calls) == {20}


def test_kept_token_dip_forwards_give_the_dense_pass_columns(teacher, digits_shards):
    """C3's DIP forwards on the kept patches' tokens only (models.dropped) give every column
    the dense network gives, bit for bit, and the facts say which ran."""
    small = {**SETTINGS, "alphas": [0.1], "betas": [0.1, 0.5, 0.9], "limit": 40}
    kept, kept_facts = collect_claims(teacher, digits_shards, **small)
    dense, dense_facts = collect_claims(teacher, digits_shards, **small, dip_forward="dense")
    assert (kept_facts["dip_forward"], dense_facts["dip_forward"]) == ("kept", "dense")
    assert kept.keys() == dense.keys()
    for k in kept:
        assert np.array_equal(kept[k], dense[k], equal_nan=kept[k].dtype.kind == "f"), k
    with pytest.raises(ValueError, match="dip_forward"):
        collect_claims(teacher, digits_shards, **small, dip_forward="sparse")


def test_a_plain_weights_teacher_needs_its_net_and_gives_the_same_columns(
    teacher, digits_shards, tmp_path
):
    """A timm state dict of the same weights (no hyper_parameters) reads with ``net=`` and gives
    the columns of the Lightning checkpoint (both without a stored normalisation, so both
    analyze the same view); without ``net`` the error says what to give."""
    from winft_lightning.runtime.checkpoints import net_weights

    ckpt = torch.load(teacher, weights_only=True)
    ckpt.pop("datamodule_hyper_parameters")
    lightning = tmp_path / "teacher.ckpt"
    torch.save(ckpt, lightning)
    plain = tmp_path / "teacher.pth"
    torch.save(net_weights(ckpt["state_dict"]), plain)
    small = {**SETTINGS, "alphas": [0.1], "keep_alphas": [0.1], "betas": [0.5], "limit": 20}
    with pytest.raises(ValueError, match="plain weights file: pass model_name"):
        collect_claims(plain, digits_shards, **small)
    want, want_facts = collect_claims(lightning, digits_shards, **small)
    got, facts = collect_claims(plain, digits_shards, **small, net={**TINY_NET, "num_classes": 10})
    assert facts["view"] == want_facts["view"] and facts["grid"] == [4, 4]
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name], equal_nan=want[name].dtype.kind == "f"), name


def test_the_two_report_table_flags_a_verdict_that_moves(part):
    _, result = part
    reference = R.reference_of(result, "N = 16 (here)")
    moved = json.loads(json.dumps(reference))
    moved["N"] = 64
    teachers = moved["claims"][0]["teachers"]
    teachers[next(iter(teachers))]["verdict"] = "made up for this test"
    lines = R.grid_table(moved, result)
    first = result["claims"][0]["id"]
    assert lines[2] == "| claim | N = 64 | N = 16 | verdict moves |"
    rows = [ln for ln in lines if ln.startswith(f"| {first} |")]
    assert len(rows) == 1 and rows[0].endswith("| yes |")
    assert f"Verdicts that move with the grid: {first} (a move:" in "\n".join(lines)
    # at the same grid the reports differ in their teachers (another family): no grid confound
    same = R.grid_table(reference, result)
    assert same[2] == "| claim | N = 16 (here) | this report | verdict moves |"
    assert "Verdicts that move between the two reports: none (a move:" in "\n".join(same)
    assert "with the grid" not in "\n".join(same)
    assert sum(ln.endswith("| no |") for ln in same) == len(reference["claims"])
    # one teacher more, with a verdict already given: the counts change, the verdicts do not
    more = json.loads(json.dumps(reference))
    for row in more["claims"]:
        row["teachers"]["9"] = next(iter(row["teachers"].values()))
        row["verdict"] = "a count of another K"
    assert "Verdicts that move between the two reports: none (a move:" in "\n".join(
        R.grid_table(more, result)
    )
    family = json.loads(json.dumps(moved))
    family["N"] = 16
    assert f"between the two reports: {first} (a move:" in "\n".join(R.grid_table(family, result))


def test_a_mimetic_teacher_is_read_with_its_trained_weights(digits_shards, tmp_path):
    """A teacher of the mimetic family (``init: mimetic`` in its net) runs the pass: its
    networks are built from the checkpoint's weights, not drawn afresh by the init (which
    ``build_vit`` refuses beside a checkpoint), so the unrestricted column equals the loaded
    teacher's own forward; the facts still name the family."""
    from helpers import untrained_teacher

    ckpt = untrained_teacher(tmp_path / "teacher.ckpt", init="mimetic")
    small = {**SETTINGS, "alphas": [0.1], "keep_alphas": [0.1], "betas": [0.5], "limit": 20}
    cols, facts = collect_claims(ckpt, digits_shards, **small)
    assert facts["teacher"]["net"]["init"] == "mimetic"
    model, info = load_teacher(ckpt)
    dm = ShardDataModule(digits_shards, batch_size=20, num_workers=0, img_size=16,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), hflip=False)  # fmt: skip
    batch = next(iter(dm.make_loader("test", rank=0, world_size=1)))
    mean, std = teacher_norm(model, info)
    with torch.no_grad():
        want = model(TF.normalize(batch["image"], mean, std)).argmax(-1) == batch["label"]
    assert np.array_equal(want.numpy(), cols["correct:full"])
