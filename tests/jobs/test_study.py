"""The study: real tiny multiruns, then the aggregation checked against the per-run files."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import NO_FIGURES, REPO, cli

pytestmark = pytest.mark.slow


def test_study_runs_and_aggregates(tmp_path):
    study_dir = tmp_path / "study"
    res = cli(
        "study=quick",
        "study.families=[vit,awd_vit,winft]",
        "study.seeds=[0,1]",
        "study.controls=[awd_vit]",
        "study.winft_beta=0.0",  # one WinfT arm
        "study.alphas=[0.1,0.3]",  # 0.3 is not an analyzed alpha: that job fails, the rest go on
        "study.geometries=[{img_size:16,patch_size:4}]",
        f'study.overrides=["debug=tiny","{NO_FIGURES}","trainer.max_epochs=1","teacher.max_epochs=1",'
        '"data.source.limit.train=300"]',
        "study.claims.teachers.seeds=[0,1]",
        f'study.claims.teachers.overrides=["debug=tiny","{NO_FIGURES}","teacher.max_epochs=1",'
        '"data.source.limit.train=300"]',
        "study.claims.limit=40",
        "study.claims.alphas=[0.1]",
        "study.claims.keep_alphas=[0.1]",
        "study.claims.betas=[0.5]",
        "study.figure_images=1",  # every figure kind, for one image
        f"paths.root_dir={tmp_path}",
        f"study_dir={study_dir}",
        module="winft_lightning.study",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]

    runs = list(csv.DictReader((study_dir / "results.csv").open()))
    assert len(runs) == 12  # vit x 2 seeds + awd (and its control) x 2 alphas x 2 + winft x 2
    failed = [r for r in runs if r["status"] == "failed"]
    assert len(failed) == 4 and all(float(r["alpha"]) == 0.3 for r in failed)
    controls = [r for r in runs if r["control"] == "random"]
    assert len(controls) == 4 and {r["family"] for r in controls} == {"awd_vit:random"}
    assert all("analyze.alphas" in r["error"] for r in failed)

    # every ok row is its run's results.json
    for r in runs:
        if r["status"] == "ok":
            per_run = json.loads((Path(r["run_dir"]) / "results.json").read_text())
            assert float(r["top1"]) == pytest.approx(per_run["top1"])
            assert float(r["eo"]) == pytest.approx(per_run["eo"])

    summary = list(csv.DictReader((study_dir / "summary.csv").open()))
    for s in summary:
        mine = [r for r in runs if r["family"] == s["family"] and r["alpha"] == s["alpha"] and r["status"] == "ok"]  # fmt: skip
        if not mine:
            assert int(s["failed"]) == 2 and s["top1_mean"] == "nan"
            continue
        top1 = [float(r["top1"]) for r in mine]
        assert float(s["top1_mean"]) == pytest.approx(statistics.fmean(top1))
        assert float(s["top1_std"]) == pytest.approx(statistics.stdev(top1))
        eo = [float(r["eo"]) for r in mine]
        assert float(s["eo_mean"]) == pytest.approx(statistics.fmean(eo))
    vit = next(s for s in summary if s["family"] == "vit")
    assert float(vit["eo_mean"]) == 256 and float(vit["eo_std"]) == 0

    report = (study_dir / "report.md").read_text()
    assert "Table I" in report and "Table II" in report and "Table III" in report
    assert "FAILED 2/2" in report
    assert "38,416" in report  # the paper's column, labelled as the paper's
    assert "(paper)" in report

    # the claims table comes first; each trained verdict is the code's, from its own interval
    from winft_lightning.core import claims as C

    assert report.split("\n## ")[1].startswith("Claims")
    by_id = {r["id"]: r for r in json.loads((study_dir / "comparisons.json").read_text())}
    top1 = {(r["family"], float(r["alpha"]), int(r["seed"])): float(r["top1"])
            for r in runs if r["status"] == "ok"}  # fmt: skip
    deltas = [(top1["awd_vit", 0.1, s] - top1["vit", 1.0, s]) / 100 for s in (0, 1)]
    want = C.t_interval(deltas)
    t1 = by_id["T1"]
    assert t1["n"] == 2 and t1["effect"] == pytest.approx(statistics.fmean(deltas))
    assert (t1["low"], t1["high"]) == pytest.approx((want.low, want.high))
    assert t1["verdict"] == C.margin_verdict(want, 0.005)
    assert t1["mde"] == pytest.approx(C.mde(want)) and want.df == 1
    assert t1["seeds_above_zero"] == sum(d > 0 for d in deltas)
    control = {int(r["seed"]): float(r["top1"]) for r in controls if r["status"] == "ok"}
    deltas = [(top1["awd_vit", 0.1, s] - control[s]) / 100 for s in (0, 1)]
    t1c = by_id["T1'"]
    assert t1c["n"] == 2 and t1c["effect"] == pytest.approx(statistics.fmean(deltas))
    assert "Retrained controls" in report and "AWD-ViT, random windows" in report
    assert by_id["T2"]["n"] == 0 and by_id["T2"]["verdict"] == C.NOT_RUN  # no AWD+DIP run
    measured = json.loads((study_dir / "claims" / "claims.json").read_text())
    facts = json.loads((study_dir / "claims" / "facts.json").read_text())
    assert [p["seed"] for p in facts["passes"]] == [0, 1]
    assert all(p["images"] == 40 and p["N"] == 16 for p in facts["passes"])
    assert all(p["teacher_row"]["epochs"] == 1 for p in facts["passes"])
    # study=quick's randomisation null (SPEC 10): each teacher's, on its pass's 40 images
    assert [(p["seed"], p["images"]) for p in facts["null"]["passes"]] == [(0, 40), (1, 40)]
    assert all(
        (study_dir / "claims" / "records" / f"null_teacher_{s}.npz").is_file() for s in (0, 1)
    )
    assert [r["id"] for r in measured["null"]["rows"]] == ["C1", "C1b", "keep/alpha=0.1",
                                                          "rho:variance:blank"]  # fmt: skip
    # study=quick's second teacher family (issue 33): the same recipe with the distance bias,
    # its own teachers and passes under claims_local/, its report beside claims/'s (same grid)
    local = study_dir / "claims_local"
    local_facts = json.loads((local / "facts.json").read_text())
    assert [p["seed"] for p in local_facts["passes"]] == [0, 1]
    assert all(p["teacher"]["net"]["attn_bias"] == "distance" for p in local_facts["passes"])
    assert all("attn_bias" not in p["teacher"]["net"] for p in facts["passes"])
    assert {p["teacher_sha256"] for p in local_facts["passes"]}.isdisjoint(
        {p["teacher_sha256"] for p in facts["passes"]})  # fmt: skip
    assert "| claim | claims/ (the study's teachers) | this report | verdict moves |" in (
        local / "report.md").read_text()  # fmt: skip
    # the students read masks from two claims teachers of the local family (quick's
    # students_teachers, SPEC 10: the teacher a factor): seed s from the local teacher of seed
    # s, each teacher's students under runs/<arm>/teacher_<seed>/; the same teachers as the
    # claims part's
    local_path = {p["seed"]: p["teacher"]["path"] for p in local_facts["passes"]}
    for r in [r for r in runs if r["status"] == "ok"]:
        assert Path(r["run_dir"]).parent.name == f"teacher_{r['seed']}"
        if r["family"] != "vit":  # the ViT baseline reads no masks
            read = json.loads((Path(r["run_dir"]) / "results.json").read_text())["teacher_ckpt"]
            assert read == local_path[int(r["seed"])], r["run_dir"]
    # the teachers live in the study's own cache (paths.root_dir), not where it was started
    assert all(p["teacher"]["path"].startswith(str(tmp_path / "outputs" / "cache"))
               for p in facts["passes"])  # fmt: skip
    for row in [r for r in measured["claims"] if r["headline"]]:
        assert f"**{row['verdict']}** |" in report and set(row["teachers"]) == {"0", "1"}
    for row in by_id.values():
        assert f"{row['seeds_above_zero']} of {row['n']} | **{row['verdict']}** |" in report
    # the trained part's records and report, rebuilt from them alone; its wall from sweeps.json
    trained = study_dir / "trained"
    assert json.loads((trained / "comparisons.json").read_text()) == json.loads(
        (study_dir / "comparisons.json").read_text())  # fmt: skip
    facts = json.loads((trained / "facts.json").read_text())
    sweeps = json.loads((study_dir / "sweeps.json").read_text())
    assert len(sweeps) == 1 and set(sweeps[0]["sweeps"]) == {
        f"{arm}_16px_p4/teacher_{t}" for arm in ("vit", "awd_vit", "awd_vit_random", "winft")
        for t in (0, 1)}  # fmt: skip
    assert facts["wall"]["seconds"] == pytest.approx(
        sum(s["seconds"] for s in sweeps[0]["sweeps"].values()), abs=0.2)  # fmt: skip
    assert facts["seeds"] == [0, 1] and "`teacher.attn_bias=distance`" in facts["teacher"]
    assert "seed 0: the claims teacher of seed 0" in facts["teacher"]
    assert "seed 1: the claims teacher of seed 1" in facts["teacher"]
    assert facts["command"] == sweeps[0]["command"]
    assert facts["command"].startswith("python -m winft_lightning.study study=quick ")
    assert len(list(csv.DictReader((trained / "records" / "runs.csv").open()))) == 12
    assert (trained / "trained_deltas.png").is_file() and "## Arms" in (
        trained / "report.md").read_text()  # fmt: skip
    assert {p.name for p in (study_dir / "claims").glob("*.png")} == {
        "claims_verdicts.png", "claims_c2.png", "claims_c3_difference.png",
        "claims_c3_curves.png", "claims_attention_distance.png"}  # fmt: skip

    # the paper's figures for fixed test images, with WinfT's predicted W (Fig. 10)
    figs = study_dir / "figures" / "16px_p4"
    names = {p.name for p in figs.glob("*.png")}
    for i in range(1):
        for kind in (
            "attention",
            "uncertainty_rows",
            "windows",
            "dip",
            "field",
            "responsive_field",
        ):
            assert f"img{i}_{kind}.png" in names
    assert {"rollout.png", "tradeoff_eo.png"} <= names
    # Fig. 10 draws the responsive field WinfT was trained on, and results.csv carries the
    # WinfT runs' own alpha and beta
    drawn = json.loads((figs / "figures.json").read_text())
    winft = [r for r in runs if r["family"] == "winft"]
    assert {(float(r["alpha"]), float(r["beta"])) for r in winft} == {(0.1, 0.0)}
    assert (drawn["field_alpha"], drawn["field_beta"]) == (0.1, 0.0)
    best = {json.loads((Path(r["run_dir"]) / "results.json").read_text())["best_ckpt"]
            for r in winft}  # fmt: skip
    assert drawn["winft"] in best
    assert len(list((figs / "inputs").iterdir())) == 1


@pytest.mark.parametrize(
    "variant",
    ["full", "quick", "claims", "claims_mimetic", "trained", "paper_grid"],
)
def test_every_study_job_composes(make_cfg, tmp_path, variant):
    """Each job of each sweep of the shipped studies, and each claims teacher, composes and
    validates (first value of every swept option), so a long study cannot die on a typo."""
    from helpers import compose_config
    from winft_lightning.stages.null_report import null_spec
    from winft_lightning.stages.sweeps import _listed, study_arms, sweep_commands
    from winft_lightning.stages.teachers import teacher_config
    from winft_lightning.stages.trained_report import TRAINED_CLAIMS
    from winft_lightning.stages.validate import validate_config

    study = compose_config([f"study={variant}"], tmp_path, config_name="study").study
    # the runtime's own OpenMP wait policy: passive measured slower on an idle host
    # (docs/performance.md); tests/runtime/test_threads.py: a set policy reaches the runtime
    assert study.omp_wait_policy is None
    spec = study.claims.teachers
    # SPEC 10's randomisation null: on 500 images a teacher, 100 in the smoke
    null = null_spec(OmegaConf.to_container(study.claims.randomisation_null))
    assert null == {"limit": 100 if variant == "quick" else 500, "modes": ["all", "cascade"],
                    "depths": None}  # fmt: skip
    # SPEC 10: K >= 5 teachers at the default grid, >= 3 per recipe at N = 196; the smoke 3
    assert list(spec.seeds) == list(range(3 if variant in ("paper_grid", "quick") else 5))
    for seed in spec.seeds:
        cfg = teacher_config(spec.experiment, list(spec.overrides), seed)
        validate_config(cfg)
        assert cfg.teacher.seed == seed and cfg.teacher.max_epochs >= 2
        # the second family: the default's recipe, mimetic init at qk_scale 4, lr 0.001
        mimetic = variant == "claims_mimetic"
        assert (cfg.teacher.init == "mimetic") == mimetic
        if mimetic:
            assert cfg.teacher.init_options.qk_scale == 4.0 and cfg.model.optimizer.lr == 0.001
            assert cfg.teacher.max_epochs == 6 and cfg.data.source.limit.train is None
        assert cfg.teacher.attn_bias == "none"
    # the other teacher families (issue 33): the local one, the same recipe with the distance
    # bias, in the claims study and its smoke; each of its teachers composes and validates
    families = study.claims.teacher_families
    families = OmegaConf.to_container(families) if families is not None else {}
    local = variant in ("claims", "quick", "paper_grid")
    assert families == ({"local": ["teacher.attn_bias=distance"]} if local else {})
    for extra in families.values():
        for seed in spec.seeds:
            cfg = teacher_config(spec.experiment, [*spec.overrides, *extra], seed)
            validate_config(cfg)
            assert cfg.teacher.attn_bias == "distance" and cfg.teacher.init == "default"
    commands = sweep_commands(study, tmp_path / "study")
    winft_betas = len(_listed(study.winft_beta)) if "winft" in study.families else 1
    sweeps = len(study.families) + winft_betas - 1 + len(study.get("controls", []))
    assert len(commands) == sweeps * len(study.geometries)
    controls = [a for _, argv in commands for a in argv if a.startswith("data.control=")]
    assert len(controls) == len(study.controls) * len(study.geometries)
    arms = {(f, round(a, 6), round(b, 6)) for f, a, b in study_arms(study)}
    if variant in ("full", "trained", "quick"):  # every trained row's arms run (SPEC 9, 10)
        assert set(controls) == {"data.control=random", "data.control=centred",
                                 "data.control=blank"}  # fmt: skip
        # 36 students; the smoke: each arm once
        assert len(arms) == 9 and len(study.seeds) == (1 if variant == "quick" else 4)
        for cid, *_, treated, control in TRAINED_CLAIMS:
            for f, a, b in (treated, control):
                assert (f, a, b) in arms, (cid, f)
    for _, argv in commands:
        overrides = [a.split(",")[0] for a in argv[3:] if "=" in a and not a.startswith("hydra.")]
        cfg = make_cfg(*overrides)
        validate_config(cfg)
        assert cfg.skip_if_done and not cfg.compare_teacher


def test_the_paper_grid_study_is_the_papers_grid(tmp_path):
    """study=paper_grid: teachers at 28 px, patch 2 (N = 196 = ViT-B/16-224's 14 x 14) with at
    least 6 heads, each at least 85 % by its recipe's bar; the two-grid table reads the
    committed N = 64 report."""
    from helpers import compose_config
    from winft_lightning.stages.teachers import teacher_config

    study = compose_config(["study=paper_grid"], tmp_path, config_name="study").study
    spec = study.claims.teachers
    net = teacher_config(spec.experiment, list(spec.overrides), 0).model.net
    assert (net.img_size // net.patch_size) ** 2 == 196 and net.num_heads >= 6
    assert spec.min_top1 >= 85 and list(spec.seeds) == [0, 1, 2]
    assert teacher_config(spec.experiment, list(spec.overrides), 1).teacher.max_epochs == 6
    reference = REPO / study.claims.reference / "claims.json"
    assert json.loads(reference.read_text())["N"] == 64
    # the newest of them: K = 5 teachers (SPEC 10's count at the default grid)
    assert set(json.loads(reference.read_text())["attention_profile"]) == {"0", "1", "2", "3", "4"}


def test_a_missing_reference_is_refused_before_any_teacher_trains(tmp_path):
    """study.claims.reference (the two-grid table's other report) is read first: a wrong path
    names the option and the path before the hours of teachers and passes, and builds nothing."""
    from helpers import compose_config
    from winft_lightning.stages.study_parts import run_claims

    missing = tmp_path / "no_report_here"
    study = compose_config(["study=paper_grid", f"study.claims.reference={missing}"], tmp_path,
                           config_name="study").study  # fmt: skip
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError, match=r"study\.claims\.reference=.*no_report_here"):
        run_claims(study, tmp_path / "study", root)
    assert not root.exists() and not (tmp_path / "study").exists()


def test_the_students_read_their_teachers_one_multirun_each(tmp_path):
    """SPEC 10's teacher as a factor: student seed seeds[i] reads teacher seeds[i % K]; each
    teacher's students are one multirun per arm, under runs/<arm>/teacher_<seed>/, with that
    teacher's file; one group keeps the sweep dirs as before; repeated teacher seeds are refused
    naming the option."""
    from helpers import compose_config
    from winft_lightning.stages.study_parts import seeds_by_teacher
    from winft_lightning.stages.sweeps import sweep_commands

    assert seeds_by_teacher([0, 1, 2, 3], [0, 1]) == {0: [0, 2], 1: [1, 3]}
    assert seeds_by_teacher([5, 6, 7], [2, 0, 1]) == {2: [5], 0: [6], 1: [7]}
    assert seeds_by_teacher([0], [0, 1]) == {0: [0], 1: []}
    with pytest.raises(ValueError, match=r"study\.students_teachers\.seeds"):
        seeds_by_teacher([0, 1], [3, 3])
    study = compose_config(["study=full"], tmp_path, config_name="study").study
    assert OmegaConf.to_container(study.students_teachers) == {
        "seeds": [0, 1], "overrides": ["teacher.attn_bias=distance"]}  # fmt: skip
    groups = [("teacher_0", [0, 2], ["teacher.ckpt=/t0.ckpt"]),
              ("teacher_1", [1, 3], ["teacher.ckpt=/t1.ckpt"])]  # fmt: skip
    one = sweep_commands(study, tmp_path / "s")
    two = sweep_commands(study, tmp_path / "s", groups)
    assert len(two) == 2 * len(one)
    for (name, argv), (tag, seeds, extra) in zip(two, groups * len(one), strict=True):
        assert name.endswith(f"/{tag}") and f"hydra.sweep.dir={tmp_path}/s/runs/{name}" in argv
        assert "seed=" + ",".join(map(str, seeds)) in argv and extra[0] in argv
    assert [n for n, _ in one] == [n.rsplit("/", 1)[0] for n, _ in two[::2]]
    assert all("seed=0,1,2,3" in argv and not any(a.startswith("teacher.ckpt") for a in argv)
               for _, argv in one)  # fmt: skip
