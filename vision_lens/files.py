"""Safe file writes shared by the result folder and the feature cache.

* ``write_text_atomic``: readers see the old file or the new one, never half of
  one; the temporary file has a unique name, so two processes writing the same
  file cannot remove each other's temporary file.
* ``FolderLock``: an ``fcntl.flock`` on a lock file, so that two runs never
  write one folder at once (the second waits, or stops naming the holder; the
  kernel drops the lock when a process dies, even on ``kill -9``).
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a unique temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FolderBusyError(RuntimeError):
    """Another process holds a folder's lock; ``pid`` is the holder's process id ("unknown" if it did not say)."""

    def __init__(self, path: Path, pid: str):
        super().__init__(f"{path} is held by process {pid}")
        self.path, self.pid = path, pid


class FolderLock:
    """An exclusive lock on ``folder/name`` between processes; ``acquire`` waits (saying so) while another holds it,
    or with ``wait=False`` raises FolderBusyError naming the holder, whose pid the lock file holds.

    Within one process the newest holder takes the lock over: a writer left
    behind by an exception (its cache object kept alive by the traceback)
    must not block a retry in the same process.
    """

    _held: dict[Path, "FolderLock"] = {}  # lock file -> its holder in this process

    def __init__(self, folder: Path, name: str = "lock"):
        self.path = (Path(folder) / name).resolve()
        self._file = None

    def acquire(self, wait: bool = True) -> None:
        """Take the lock; raises OSError when the lock file cannot be created (a read-only folder)."""
        previous = self._held.get(self.path)
        if previous is not None:
            previous.release()
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                self._file.seek(0)
                pid = self._file.read().strip() or "unknown"
                self.release()
                raise FolderBusyError(self.path.parent, pid) from None
            print(f"[vision-lens] waiting for another run that is writing {self.path.parent}", file=sys.stderr)
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self._file.truncate(0)  # the holder's pid, for a process that finds the folder busy
        self._file.write(str(os.getpid()))
        self._file.flush()
        self._held[self.path] = self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None
            if self._held.get(self.path) is self:
                del self._held[self.path]
