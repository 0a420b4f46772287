"""Publishing files (``io/atomic.py``): each file synced before its rename, its directory after
it, or once at the end of a ``directories_synced_once`` block."""
import pytest

from stardist_hpc.io import atomic
from stardist_hpc.io.atomic import directories_synced_once, write_bytes


@pytest.fixture
def synced(monkeypatch):
    """The directories synced, in order."""
    calls = []
    monkeypatch.setattr(atomic, "sync_directory", lambda directory: calls.append(directory))
    return calls


def test_a_file_alone_syncs_its_directory_at_once(tmp_path, synced):
    write_bytes(tmp_path / "a.bin", b"a")
    assert synced == [tmp_path] and (tmp_path / "a.bin").read_bytes() == b"a"


def test_a_block_syncs_each_directory_once_at_its_end(tmp_path, synced):
    (tmp_path / "sub").mkdir()
    with directories_synced_once():
        for name in ("a", "b", "sub/c", "sub/d"):
            write_bytes(tmp_path / name, name.encode())
        assert synced == []
    assert synced == [tmp_path, tmp_path / "sub"]
    write_bytes(tmp_path / "e", b"e")   # after the block: at once again
    assert synced[-1] == tmp_path and len(synced) == 3


def test_a_nested_block_leaves_the_sync_to_the_outer_one(tmp_path, synced):
    with directories_synced_once():
        with directories_synced_once():
            write_bytes(tmp_path / "a", b"a")
        assert synced == []
    assert synced == [tmp_path]


def test_a_failed_block_syncs_nothing_more_and_ends_the_deferral(tmp_path, synced):
    with pytest.raises(RuntimeError), directories_synced_once():
        write_bytes(tmp_path / "a", b"a")
        raise RuntimeError("a task's error")
    assert synced == []
    write_bytes(tmp_path / "b", b"b")
    assert synced == [tmp_path]
