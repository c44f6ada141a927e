"""The one hasher: hex SHA-256 of a JSON value (cache keys, fingerprints) or of a file.

Cache keys and fingerprints are stored on disk (artifact-store keys, manifest fingerprints,
mask-set folder names): the JSON text hashed here must stay byte-for-byte what it was, or
caches rebuild and stored mask sets stop matching (``tests/runtime/test_hashing.py`` pins the values).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def json_digest(obj: Any, length: int | None = None) -> str:
    """Hex SHA-256 of ``json.dumps(obj, sort_keys=True, default=str)`` (default separators),
    cut to its first ``length`` characters when given."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob).hexdigest()
    return digest[:length] if length else digest


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
