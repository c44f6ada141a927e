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


def save_columns(path: Path, columns: dict[str, Any]) -> Path:
    """Write columns (name -> numpy array) as one compressed ``.npz`` atomically (temporary
    file + rename): a study's per-image records."""
    import io

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **columns)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path


def load_columns(path: Path) -> dict[str, Any]:
    """The columns of an ``.npz`` written by :func:`save_columns` (no pickles)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
