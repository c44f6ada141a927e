"""The one hasher (hashing.py): every cache key and fingerprint keeps its exact value.

The expected digests were computed by the code before the helpers moved to hashing.py
(cache.config_key / manifest_digest, prepare.fingerprint, analyze.alphas_hash and its
manifest fingerprint, teacher.file_sha256). A changed value would silently rebuild caches
and stop stored mask sets from matching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from winft_lightning.models import teacher
from winft_lightning.runtime.hashing import file_sha256, json_digest
from winft_lightning.stages import analyze, cache, prepare

MANIFEST = {
    "splits": {"train": {"count": 3}},
    "source": {"name": "digits", "seed": 0},
    "created": "2026-01-01",
    "root": "/x",
    "format": 2,
}


def test_keys_and_fingerprints_keep_their_values(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 40000)
    src = OmegaConf.create(
        {"name": "digits", "seed": 0, "limit": {"train": 200, "val": None}, "val_fraction": 0.1}
    )
    key = cache.config_key("abc", [0.1, 0.5], src, {"b": 1, "a": Path("/p")})
    assert key == "8abc6273a557"
    assert cache.manifest_digest(tmp_path) == (
        "9dd37563008c2a1dc82069995a1035da6506c4f2a336614e6f2df953f3e8be54"
    )
    fp = prepare.fingerprint({"name": "digits", "seed": 0, "limit": {"train": 200, "val": None}})
    assert fp == "c778fee042adf23e8f3933757fe7c31fb0b17f8eba0f03cce4d3cd70ac1c2387"
    assert analyze.alphas_hash([0.1, 0.5, 1]) == "4671549b"
    blob_sha = "19d6d9faf9ce166abeb8452ff274241877eb1c09580f7ef62ff77696a6bee1fc"
    assert teacher.file_sha256(tmp_path / "blob.bin") == file_sha256(tmp_path / "blob.bin")
    assert file_sha256(tmp_path / "blob.bin") == blob_sha
    assert blob_sha == hashlib.sha256((tmp_path / "blob.bin").read_bytes()).hexdigest()


def test_json_digest_is_the_formulas_it_replaced():
    # analyze_shards' mask-set fingerprint was json.dumps(..., default=str) without sort_keys:
    # its value has no dict in it, so sorting keys changes nothing
    parts = ["f" * 64, "2026-11-25T10:00:00", "a" * 64, [0.1, 0.5], [0.5] * 3, [0.25] * 3, "i16z"]
    old = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
    assert json_digest(parts) == old
    # alphas_hash: json.dumps of a float list, first 8 characters
    alphas = [0.025, 0.1, 1.0]
    assert (
        json_digest(alphas, length=8) == hashlib.sha256(json.dumps(alphas).encode()).hexdigest()[:8]
    )
    # manifest_digest: sort_keys, no default (JSON-read content never needs one)
    assert (
        json_digest(MANIFEST)
        == hashlib.sha256(json.dumps(MANIFEST, sort_keys=True).encode()).hexdigest()
    )
    assert json_digest({"b": 1, "a": 2}) == json_digest({"a": 2, "b": 1})
    assert len(json_digest(MANIFEST, length=12)) == 12 and len(json_digest(MANIFEST)) == 64
