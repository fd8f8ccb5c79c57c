"""Safe file writes shared by the result folder and the feature cache.

* ``write_text_atomic``: readers see the old file or the new one, never half of
  one; the temporary file has a unique name, so two processes writing the same
  file cannot remove each other's temporary file.
* ``FolderLock``: an ``fcntl.flock`` on a lock file, so that two runs never
  write one folder at once (the second waits; the kernel drops the lock when a
  process dies, even on ``kill -9``).
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


class FolderLock:
    """An exclusive lock on ``folder/lock`` between processes; ``acquire`` waits (saying so) while another holds it.

    Within one process the newest holder takes the lock over: a writer left
    behind by an exception (its cache object kept alive by the traceback)
    must not block a retry in the same process.
    """

    _held: dict[Path, "FolderLock"] = {}  # lock file -> its holder in this process

    def __init__(self, folder: Path):
        self.path = (Path(folder) / "lock").resolve()
        self._file = None

    def acquire(self) -> None:
        """Take the lock; raises OSError when the lock file cannot be created (a read-only folder)."""
        previous = self._held.get(self.path)
        if previous is not None:
            previous.release()
        self._file = open(self.path, "a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[vision-lens] waiting for another run that is writing {self.path.parent}", file=sys.stderr)
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self._held[self.path] = self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None
            if self._held.get(self.path) is self:
                del self._held[self.path]
