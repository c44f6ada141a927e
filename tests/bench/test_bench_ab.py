"""bench/ab.py's comparison: paired differences of the step ratios, their t interval and the
verdict computed from it; the base checkout's package copied beside this tree's, in either
layout of the package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scipy import stats

from bench import ab


def _runs(awd: list[float]) -> list[dict[str, float]]:
    return [{"vit_step_s": 0.5, **{v: 1.0 for v in ab.DENSE[1:]}, "awd_dense": a} for a in awd]


def test_paired_difference_interval_and_verdict():
    base = _runs([1.00, 1.04, 0.98, 1.02])
    this = _runs([1.10, 1.15, 1.07, 1.13])  # slower by 0.10 +- 0.01 in every pair
    row = ab.compare(base, this)["awd_dense"]
    deltas = [0.10, 0.11, 0.09, 0.11]
    half = stats.t.ppf(0.975, 3) * stats.tstd(deltas) / 2
    assert row["difference"]["mean"] == pytest.approx(0.1025)
    assert row["difference"]["low"] == pytest.approx(0.1025 - half)
    assert row["difference"]["high"] == pytest.approx(0.1025 + half)
    assert row["this_higher"] == "supported"
    assert row["base"] == [1.0, 1.04, 0.98, 1.02] and row["this"][0] == 1.1
    # the same runs the other way round: the verdict turns with the sign
    assert ab.compare(this, base)["awd_dense"]["this_higher"] == "contradicted"


def test_noise_larger_than_the_change_is_inconclusive():
    base = _runs([1.00, 1.06, 0.95, 1.03])
    this = _runs([1.05, 0.99, 1.04, 1.00])
    assert ab.compare(base, this)["awd_dense"]["this_higher"] == "inconclusive"


def test_a_change_inside_the_margin_is_negligible():
    base = _runs([1.000, 1.004, 0.998, 1.002])
    this = _runs([1.003, 1.006, 1.000, 1.004])  # 0.002 to 0.003 higher: under the 0.02 margin
    assert ab.compare(base, this)["awd_dense"]["this_higher"] == "negligible"


def test_unpaired_runs_are_refused():
    with pytest.raises(ValueError):
        ab.compare(_runs([1.0, 1.0]), _runs([1.0, 1.0, 1.0]))


@pytest.fixture
def drop_base_package():
    """After the test: the copied base package's modules dropped, so that the next copy imports
    afresh."""
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == ab.BASE_PACKAGE]:
        del sys.modules[name]


def test_base_package_imports_beside_this_tree(tmp_path, monkeypatch, drop_base_package):
    """--one-process: a checkout's package, copied as winft_base, imports next to
    winft_lightning and builds its own modules (none of its imports reach this tree's)."""
    import winft_lightning.lit.modules
    from winft_lightning.runtime.resolvers import register

    monkeypatch.syspath_prepend(str(ab.base_package(ab.THIS_TREE, tmp_path)))
    try:
        base = ab.modules_of(ab.BASE_PACKAGE)
        assert base.__name__ == f"{ab.BASE_PACKAGE}.lit.modules"
        assert Path(base.__file__).is_relative_to(tmp_path)
        assert base.MODULES.keys() == winft_lightning.lit.modules.MODULES.keys()
        assert base.MODULES["vit"] is not winft_lightning.lit.modules.MODULES["vit"]
        copied = sys.modules[f"{ab.BASE_PACKAGE}.models"]
        assert Path(copied.__file__).is_relative_to(tmp_path)
        assert not any("winft_lightning" in p.read_text() for p in tmp_path.rglob("*.py"))
    finally:  # the copy registered its own Hydra resolvers: give this tree's back
        register()


def test_flat_base_package_finds_its_modules_table(tmp_path, monkeypatch, drop_base_package):
    """A checkout from before the subpackages: its table is in the flat ``modules.py``."""
    package = tmp_path / "checkout" / "src" / "winft_lightning"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "modules.py").write_text(
        "from winft_lightning import __name__ as PACKAGE\nMODULES = {'vit': PACKAGE}\n"
    )
    monkeypatch.syspath_prepend(str(ab.base_package(tmp_path / "checkout", tmp_path / "copy")))
    base = ab.modules_of(ab.BASE_PACKAGE)
    assert base.__name__ == f"{ab.BASE_PACKAGE}.modules"
    assert base.MODULES == {"vit": ab.BASE_PACKAGE}
