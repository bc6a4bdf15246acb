import pytest

from pointcell.io import atomic
from pointcell.io.atomic import atomic_output


def test_file_appears_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_outputs_get_the_usual_permissions(tmp_path):
    with atomic.atomic_output(tmp_path / "out.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK


def test_a_stopping_process_removes_the_temporaries_of_writes_in_progress(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic.atomic_output(tmp_path / "a.png") as tmp:
        tmp.write_bytes(b"half")
        assert atomic.remove_live_temporaries() == 1  # what the CLI does on SIGTERM/Ctrl-C
        assert not tmp.exists()
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    assert atomic.remove_live_temporaries() == 0  # finished writes are forgotten
