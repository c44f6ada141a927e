"""Files that readers see whole or not at all, and the stamps written into them."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

CODE_VERSION = "0.1.0"  # the package's version, recorded in every manifest


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp name, fsync, rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
