"""Publishing files (``io/atomic.py``): each file synced before its rename and its directory
after it, or, in a ``synced_at_end`` block, all at the block's end: one ``syncfs`` per
filesystem (without one in libc: every file, then each directory once)."""
import errno

import pytest

from stardist_hpc.io import atomic
from stardist_hpc.io.atomic import synced_at_end, write_bytes


@pytest.fixture
def synced(monkeypatch):
    """The syncs made, in order, as ("file" | "dir" | "filesystem", path)."""
    calls = []
    real_fsync, real_sync_filesystem = atomic._fsync, atomic.sync_filesystem

    def recording_fsync(path, *flags):
        calls.append(("dir" if flags else "file", path))
        real_fsync(path, *flags)

    def recording_sync_filesystem(directory):
        calls.append(("filesystem", directory))
        real_sync_filesystem(directory)

    monkeypatch.setattr(atomic, "_fsync", recording_fsync)
    monkeypatch.setattr(atomic, "sync_filesystem", recording_sync_filesystem)
    return calls


@pytest.fixture
def without_syncfs(monkeypatch):
    """As where libc has no syncfs."""
    monkeypatch.setattr(atomic, "_SYNCFS", None)


def _names(calls, root):
    """The calls with paths relative to ``root`` (a temporary name's PID part dropped)."""
    named = []
    for kind, path in calls:
        relative = str(path.relative_to(root)) if path != root else "."
        named.append((kind, relative.split(".")[0] if kind == "file" else relative))
    return named


def _write_in_two_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a", "b", "sub/c", "sub/d"):
        write_bytes(tmp_path / name, name.encode())


def test_libc_has_syncfs_here():
    assert atomic._SYNCFS is not None   # Linux: the tests below test what runs


def test_a_file_alone_is_synced_before_its_rename_then_its_directory(tmp_path, synced):
    write_bytes(tmp_path / "a.bin", b"a")
    assert _names(synced, tmp_path) == [("file", "a"), ("dir", ".")]
    assert (tmp_path / "a.bin").read_bytes() == b"a"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_block_syncs_its_filesystem_once_at_its_end(tmp_path, synced):
    with synced_at_end():
        _write_in_two_folders(tmp_path)
        assert synced == []
        assert (tmp_path / "sub" / "c").read_bytes() == b"sub/c"   # renamed at once
    [(kind, directory)] = synced
    assert kind == "filesystem" and directory in (tmp_path, tmp_path / "sub")
    write_bytes(tmp_path / "e", b"e")   # after the block: at once again
    assert _names(synced[-2:], tmp_path) == [("file", "e"), ("dir", ".")]


def test_without_syncfs_a_block_syncs_every_file_then_each_directory_once(
        tmp_path, synced, without_syncfs):
    with synced_at_end():
        _write_in_two_folders(tmp_path)
        assert synced == []
    assert _names(synced, tmp_path) == [("file", "a"), ("file", "b"), ("file", "sub/c"),
                                        ("file", "sub/d"), ("dir", "."), ("dir", "sub")]


@pytest.mark.parametrize("syncfs", [True, False])
def test_a_nested_block_leaves_the_syncs_to_the_outer_one(tmp_path, synced, monkeypatch,
                                                          syncfs):
    if not syncfs:
        monkeypatch.setattr(atomic, "_SYNCFS", None)
    with synced_at_end():
        with synced_at_end():
            write_bytes(tmp_path / "a", b"a")
        assert synced == []
    expected = [("filesystem", ".")] if syncfs else [("file", "a"), ("dir", ".")]
    assert _names(synced, tmp_path) == expected


def test_a_failed_block_syncs_nothing_more_and_ends_the_deferral(tmp_path, synced):
    with pytest.raises(RuntimeError), synced_at_end():
        write_bytes(tmp_path / "a", b"a")
        raise RuntimeError("a task's error")
    assert synced == []
    write_bytes(tmp_path / "b", b"b")
    assert _names(synced, tmp_path) == [("file", "b"), ("dir", ".")]


def test_a_failing_syncfs_is_an_os_error_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_SYNCFS", lambda fd: -1)
    with pytest.raises(OSError, match=str(tmp_path)):
        atomic.sync_filesystem(tmp_path)


def test_a_refused_syncfs_falls_back_to_syncing_each_file(tmp_path, synced, monkeypatch):
    def refusing(directory):
        raise OSError(errno.ENOSYS, "Function not implemented", str(directory))

    monkeypatch.setattr(atomic, "sync_filesystem", refusing)
    with synced_at_end():
        write_bytes(tmp_path / "a", b"a")
    assert _names(synced, tmp_path) == [("file", "a"), ("dir", ".")]
