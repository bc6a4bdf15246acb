"""Atomic file output: a file appears complete under its final name, or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    The temporary file keeps the final suffix so that writers choosing a format by extension
    behave the same. On any exception the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    with _LIVE_LOCK:
        _LIVE.add(tmp)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes the file private; give it the usual permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(tmp)
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it into place, whole, only if the block
    succeeds. If another process put ``path`` in place meanwhile, its copy is kept."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_live_temporaries() -> int:
    """Delete the temporary files of writes still in progress, in every thread; return how
    many. For a process that stops on a signal: the main thread's ``finally`` blocks run, but
    writer threads may be mid-file when it exits."""
    with _LIVE_LOCK:
        live = list(_LIVE)
        _LIVE.clear()
    for tmp in live:
        tmp.unlink(missing_ok=True)
    return len(live)


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_LIVE: set[Path] = set()  # temporaries of the writes in progress, for remove_live_temporaries
_LIVE_LOCK = threading.Lock()
_UMASK = _read_umask()  # read once: os.umask is process-wide and writers run in threads
