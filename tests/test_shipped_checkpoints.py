"""The shipped checkpoints: each listed in checkpoints/MANIFEST with its true sha256, each <= 25 MB."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "checkpoints"
LIMIT = 25 * 1024 * 1024


def _manifest() -> dict[str, list[str]]:
    lines = (FOLDER / "MANIFEST").read_text(encoding="utf-8").splitlines()
    rows = [[field.strip() for field in line.split(" | ")] for line in lines if line.strip() and not line.startswith("#")]
    return {row[0]: row for row in rows}


def test_every_shipped_file_is_listed_with_its_sha256_and_fits_the_size_limit() -> None:
    manifest = _manifest()
    shipped = sorted(p for p in FOLDER.iterdir() if p.is_file() and p.name != "MANIFEST")
    assert shipped, "no shipped checkpoints found"
    for path in shipped:
        key = f"checkpoints/{path.name}"
        assert key in manifest, f"{key} is not listed in checkpoints/MANIFEST"
        assert path.stat().st_size <= LIMIT, f"{key} is {path.stat().st_size} bytes, above 25 MB"
        assert manifest[key][-1] == hashlib.sha256(path.read_bytes()).hexdigest(), f"{key}: sha256 differs from MANIFEST"


def test_every_manifest_line_names_an_existing_file_and_has_all_fields() -> None:
    for key, row in _manifest().items():
        assert (ROOT / key).is_file(), f"MANIFEST lists {key}, which does not exist"
        assert len(row) == 6, f"{key}: expected 6 fields (path | task | how trained | data | steps | sha256), got {len(row)}"
