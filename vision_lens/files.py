"""Safe file writes shared by the result folder and the feature cache.

* ``write_bytes_atomic`` and ``write_text_atomic``: readers see the old file or
  the new one, never half of one; the temporary file has a unique name, so two
  processes writing the same file cannot remove each other's temporary file.
  The file gets the permissions of any file the user creates (``0666`` less the
  umask), not ``mkstemp``'s owner-only ``0600``; a failed write (a full disk)
  leaves the old file as it was and raises an OSError whose ``filename`` is
  the file's path.
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


def umask() -> int:
    """This process's umask (Linux reports it in /proc; elsewhere it is set and put back at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a unique temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())  # as open() would have created it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            exc.filename = str(path)  # the file meant, not its temporary name
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


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

    def holder(self) -> str | None:
        """The pid of another process that holds the lock now ("unknown" if it did not say), else None; creates and
        takes nothing (a holder in this process is None too: :meth:`acquire` takes its lock over)."""
        if self.path in self._held:
            return None
        try:
            f = open(self.path)
        except OSError:  # no lock file: nobody holds it
            return None
        with f:  # closing drops the shared lock taken to test
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "unknown"
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None
            if self._held.get(self.path) is self:
                del self._held[self.path]
