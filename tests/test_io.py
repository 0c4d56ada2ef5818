"""Atomic writes: a file appears whole or not at all, and errors name the path."""

import pytest

from nbdt._io import atomic_path, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text(tmp_path / "out.json", "old\n")
    # torch's writer reports a full disk as a RuntimeError: it becomes an OSError naming the file
    with (
        pytest.raises(OSError, match=r"out\.json: not written \(disk full\)"),
        atomic_path(target) as tmp,
    ):
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    write_text(target, "new\r\n")
    assert target.read_bytes() == b"new\r\n"


def test_errors_name_the_path(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out: is a folder, not a file"):
        write_text(tmp_path / "out", "x")
    with pytest.raises(FileNotFoundError, match=r"a\.txt: the folder .*nope does not exist"):
        write_text(tmp_path / "nope" / "a.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
