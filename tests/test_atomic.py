"""Publishing files (``io/atomic.py``): each file synced before its rename and its directory
after it, or, in a ``synced_at_end`` block, every file and then each directory once at the
block's end."""
import pytest

from stardist_hpc.io import atomic
from stardist_hpc.io.atomic import synced_at_end, write_bytes


@pytest.fixture
def synced(monkeypatch):
    """The files and directories synced, in order, as ("file" | "dir", name relative to the
    temporary directory or absolute)."""
    calls = []
    real_fsync = atomic._fsync

    def recording_fsync(path, *flags):
        calls.append(("dir" if flags else "file", path))
        real_fsync(path, *flags)

    monkeypatch.setattr(atomic, "_fsync", recording_fsync)
    return calls


def _names(calls, root):
    """The calls with paths relative to ``root`` (a temporary name's PID part dropped)."""
    named = []
    for kind, path in calls:
        relative = str(path.relative_to(root)) if path != root else "."
        named.append((kind, relative.split(".")[0] if kind == "file" else relative))
    return named


def test_a_file_alone_is_synced_before_its_rename_then_its_directory(tmp_path, synced):
    write_bytes(tmp_path / "a.bin", b"a")
    assert _names(synced, tmp_path) == [("file", "a"), ("dir", ".")]
    assert (tmp_path / "a.bin").read_bytes() == b"a"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_block_syncs_every_file_then_each_directory_once_at_its_end(tmp_path, synced):
    (tmp_path / "sub").mkdir()
    with synced_at_end():
        for name in ("a", "b", "sub/c", "sub/d"):
            write_bytes(tmp_path / name, name.encode())
        assert synced == []
        assert (tmp_path / "sub" / "c").read_bytes() == b"sub/c"   # renamed at once
    assert _names(synced, tmp_path) == [("file", "a"), ("file", "b"), ("file", "sub/c"),
                                        ("file", "sub/d"), ("dir", "."), ("dir", "sub")]
    write_bytes(tmp_path / "e", b"e")   # after the block: at once again
    assert _names(synced[-2:], tmp_path) == [("file", "e"), ("dir", ".")]


def test_a_nested_block_leaves_the_syncs_to_the_outer_one(tmp_path, synced):
    with synced_at_end():
        with synced_at_end():
            write_bytes(tmp_path / "a", b"a")
        assert synced == []
    assert _names(synced, tmp_path) == [("file", "a"), ("dir", ".")]


def test_a_failed_block_syncs_nothing_more_and_ends_the_deferral(tmp_path, synced):
    with pytest.raises(RuntimeError), synced_at_end():
        write_bytes(tmp_path / "a", b"a")
        raise RuntimeError("a task's error")
    assert synced == []
    write_bytes(tmp_path / "b", b"b")
    assert _names(synced, tmp_path) == [("file", "b"), ("dir", ".")]
