"""One job per output folder: a kernel lock on a file naming the job that holds it.

Two scans into the same ``--out`` would write the same parts, two training runs into the same
``output_dir`` the same checkpoints; the second refuses at start with a message naming the first
(pid, host, start time). The lock is ``flock`` on ``.scan.lock`` (``.training.lock`` for training): the
kernel releases it when its holder dies, however it dies, so a killed job resumes with the same
command and no pid has to be judged alive or dead (a pid from another host, or reused since, cannot
fool it). The file's text only names the holder; a file left by a job that died is taken over with
a warning naming that job. Shared by the scan (`scan.engine`) and training (`training.distributed`).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import time
import warnings
from pathlib import Path

from .errors import SafeVLMError

LOCK_NAME = ".scan.lock"  # the scan's lock file (``OutputLock``'s default job)

# Lock descriptors held by this process. A forked child (a DataLoader worker) closes its copies at
# once, so that workers outliving a killed scan do not keep its folder locked. The fork hook that does
# it is registered by the first lock taken, not at import: importing this module changes nothing.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


@functools.cache  # once per process: a fork hook cannot be removed, so it must not be added twice
def _register_fork_hook() -> None:
    os.register_at_fork(after_in_child=_close_held_in_child)


class OutputLockedError(SafeVLMError, RuntimeError):
    """Another job is writing into the output folder."""


class OutputLock:
    """``with OutputLock(out_dir):`` holds the folder for this process; released on exit or when the process dies.

    ``job`` names the kind of job in the lock file's name (``.{job}.lock``) and in the messages; ``hint``
    ends the refusal (what the user can do instead).
    """

    def __init__(
        self, out_dir: str | Path, job: str = "scan", hint: str = "wait for it to finish or use another --out folder"
    ) -> None:
        self.job, self.hint = job, hint
        self.path = Path(out_dir) / f".{job}.lock"
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise OutputLockedError(self._refusal(holder)) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: open the new one
        previous = _read(fd)
        if previous:
            warnings.warn(
                f"{self.path.parent}: taking over the lock of a {self.job} that is gone "
                f"(pid {previous.get('pid')} on {previous.get('host')}, started {previous.get('started')})",
                stacklevel=2,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.owner).encode(), 0)
        self.fd = fd
        _register_fork_hook()
        _HELD.add(fd)
        return self

    def _refusal(self, holder: dict) -> str:
        who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
        return (
            f"{self.path.parent} is being written by another {self.job} "
            f"({who if holder else 'holder not recorded yet'}); {self.hint}"
        )

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # still holding the lock: nobody can take it in between
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> dict:
    """The holder named in the lock file, or {} (empty or unreadable: nothing to name)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
