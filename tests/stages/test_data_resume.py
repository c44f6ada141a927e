"""prepare and analyze killed midway resume after their last complete shard; an unfinished
shard set is never taken for complete; the CLIs run end to end."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

import winft_lightning.stages.analyze as analyze_mod
import winft_lightning.stages.prepare as prepare_mod
from helpers import DIGITS, cli
from winft_lightning.data.errors import ManifestError
from winft_lightning.data.shards import JOURNAL, MANIFEST, read_manifest
from winft_lightning.stages.analyze import analyze_shards
from winft_lightning.stages.prepare import prepare_shards


class Killed(BaseException):
    """Stands in for SIGKILL/KeyboardInterrupt: not an Exception, nothing may swallow it."""


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in root.glob("*.tar")}


def tars(root: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(root.glob("*.tar"))}


def test_prepare_resumes_after_kill(tmp_path, monkeypatch):
    real = prepare_mod.load_source

    def dies_at_train_60(cfg):
        data = real(cfg)

        def boom():
            raise Killed

        data.splits["train"][60] = replace(data.splits["train"][60], load=boom)
        return data

    out = tmp_path / "resumed"
    monkeypatch.setattr(prepare_mod, "load_source", dies_at_train_60)
    with pytest.raises(Killed):
        prepare_shards(DIGITS, out, progress=False)
    # two complete train shards, one half-written temp shard, no manifest
    assert sorted(f.name for f in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert (out / ".train-000002.tar.tmp").is_file() and (out / JOURNAL).is_file()
    assert not (out / MANIFEST).exists()
    with pytest.raises(ManifestError, match="not a complete shard set"):
        read_manifest(out)
    done = snapshot(out)

    monkeypatch.setattr(prepare_mod, "load_source", real)
    loads = []
    counting = prepare_mod.load_source

    def count_loads(cfg):
        data = counting(cfg)
        for split, items in data.splits.items():
            data.splits[split] = [
                replace(it, load=lambda it=it, s=split: loads.append(s) or it.load())
                for it in items
            ]
        return data

    monkeypatch.setattr(prepare_mod, "load_source", count_loads)
    m = prepare_shards(DIGITS, out, progress=False)
    assert loads.count("train") == 150  # the first 50 were not redone
    assert {k: v for k, v in snapshot(out).items() if k in done} == done  # files untouched
    assert not (out / JOURNAL).exists() and not list(out.glob(".*.tmp"))
    assert m["splits"]["train"]["count"] == 200
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(prepare_mod, "load_source", real)
    prepare_shards(DIGITS, fresh, progress=False)
    assert tars(out) == tars(fresh)  # byte-identical to an uninterrupted run
    # a finished set is left alone
    before = snapshot(out)
    prepare_shards(DIGITS, out, progress=False)
    assert snapshot(out) == before


def test_analyze_resumes_after_kill(
    tmp_path, monkeypatch, digits_shards, teacher_ckpt, analyzed_shards
):
    real = analyze_mod.analyze_split
    produced = []

    def dies_after_60(*args, **kw):
        for item in real(*args, **kw):
            if len(produced) == 60:
                raise Killed
            produced.append(item[0])
            yield item

    out = tmp_path / "masks"
    kw = dict(alphas=[0.1, 0.5], batch_size=32, progress=False)
    monkeypatch.setattr(analyze_mod, "analyze_split", dies_after_60)
    with pytest.raises(Killed):
        analyze_shards(teacher_ckpt, digits_shards, out, **kw)
    assert sorted(f.name for f in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert not (out / MANIFEST).exists()
    done = snapshot(out)

    produced.clear()
    monkeypatch.setattr(analyze_mod, "analyze_split", lambda *a, **k: counted(real(*a, **k)))

    def counted(it):
        for item in it:
            produced.append(item[0])
            yield item

    analyze_shards(teacher_ckpt, digits_shards, out, **kw)
    assert len(produced) == 300 - 50  # the two finished shards were not analyzed again
    assert {k: v for k, v in snapshot(out).items() if k in done} == done
    assert tars(out) == tars(analyzed_shards)  # identical to the uninterrupted fixture run


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return cli(
        *args, module=module, timeout=120, cwd=cwd, env=os.environ | {"PYTHONWARNINGS": "ignore"}
    )


@pytest.mark.slow
def test_clis_prepare_then_analyze(tmp_path, teacher_ckpt):
    shards = tmp_path / "shards"
    r = _cli(
        "winft_lightning.prepare",
        "data=digits",
        f"out_dir={shards}",
        "data.source.limit.train=40",
        "data.source.limit.val=10",
        "data.source.limit.test=10",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "{'train': 40, 'val': 10, 'test': 10}" in r.stdout
    r = _cli(
        "winft_lightning.analyze",
        f"teacher_ckpt={teacher_ckpt}",
        "data=digits",
        f"shards={shards}",
        "alphas=[0.1,0.2]",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x smaller" in r.stdout and "bit-packed" in r.stdout
    (masks,) = (shards / "analyzed").iterdir()
    m = read_manifest(masks)
    assert m["alphas"] == [0.1, 0.2] and m["splits"]["val"]["count"] == 10
    assert (tmp_path / "outputs").is_dir()  # Hydra's run dir under outputs/ of the cwd
    r = _cli("winft_lightning.analyze", "data=digits", f"shards={shards}", cwd=tmp_path)
    assert r.returncode != 0 and "analyze: teacher_ckpt is required" in r.stderr
