"""``python -m winft_lightning.study recompute=<report dir>``: a study's saved report parts
rebuilt from their records and facts alone, each rebuilt file compared with the saved one. It
reads no teacher and trains nothing: neither Lightning nor timm is imported."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def _parts(path: Path) -> dict[str, Path]:
    """The report parts under ``path`` (a study dir with ``claims/`` and/or ``trained/`` and
    any earlier recipe's ``claims_<name>/``, or one part's dir): ``{part: its dir}``."""
    if (path / "facts.json").is_file():
        return {"trained" if (path / "records" / "runs.csv").is_file() else "claims": path}
    found = {p: path / p for p in ("claims", "trained") if (path / p / "facts.json").is_file()}
    # an earlier recipe's claims kept beside the current one (SPEC 10: every run counts)
    found |= {d.name: d for d in sorted(path.glob("claims_*")) if (d / "facts.json").is_file()}
    return found


def recompute(path: Path, out_root: Path) -> dict[str, bool]:
    """``recompute=<report dir>``: copy each part's records and facts (its ``claims/`` and
    ``trained/`` dirs, or one such dir itself) to ``out_root/<name>/<part>``, rebuild its report
    and figures there from them alone, and compare each rebuilt file with the saved one:
    ``{"<part>/<file>": identical}``. The report dir itself is only read."""
    from winft_lightning.stages import claims_report, trained_report

    parts = _parts(path)
    if not parts:
        raise FileNotFoundError(
            f"recompute={path}: no facts.json there or in its claims/ or trained/"
        )
    out_dir = out_root / path.resolve().name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    same = {}
    for part, src in parts.items():
        out = out_dir / part
        shutil.copytree(src / "records", out / "records")
        shutil.copy2(src / "facts.json", out / "facts.json")
        (trained_report if part == "trained" else claims_report).rebuild(out)
        same |= {f"{part}/{p.name}": p.read_bytes() == (src / p.name).read_bytes()
                 for p in sorted(out.iterdir()) if p.is_file() and (src / p.name).is_file()
                 and p.name != "facts.json"}  # fmt: skip
    return same


def check_recompute(path: Path, out_root: Path) -> None:
    """:func:`recompute` ``path`` under ``out_root``, log and print how many saved files it
    rebuilt identically, and exit with the list of those that differ (if any)."""
    same = recompute(path, out_root)
    for name, identical in same.items():
        log.info("recompute: %s %s", name, "identical" if identical else "DIFFERS")
    rebuilt = out_root / path.resolve().name
    print(f"rebuilt under {rebuilt}: {sum(same.values())} of {len(same)} saved files identical")
    if not all(same.values()):
        raise SystemExit(f"recompute: {[k for k, v in same.items() if not v]} differ")
