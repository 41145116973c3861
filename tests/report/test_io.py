import os

import pytest

from normapps.io import atomic_path, atomic_write, check_overwrite


def test_atomic_write_text_and_bytes_leaves_no_temp_file(tmp_path):
    path = atomic_write(tmp_path / "sub" / "a.txt", "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_existing_file_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "results.md"
    check_overwrite(path, overwrite=False)  # absent: fine
    path.write_text("mine")
    os.chmod(path, 0o600)
    with pytest.raises(FileExistsError, match=r"results\.md already exists; pass --overwrite to replace it"):
        atomic_write(path, "new", overwrite=False)
    assert path.read_text() == "mine"
    atomic_write(path, "new", overwrite=True)
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o600  # permissions kept
