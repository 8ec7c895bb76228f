"""One scan per output folder: a lock file naming the scan that holds it.

Two scans into the same ``--out`` would write the same parts; the second refuses at start with a
message naming the first (pid, host, start time). A lock left by a scan that died (its pid no
longer runs on this host) is taken over with a warning, so a killed scan resumes with the same command.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK_NAME = ".scan.lock"


class ScanLockedError(RuntimeError):
    """Another scan is writing into the output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


class OutputLock:
    """``with OutputLock(out_dir):`` holds the folder for this process; released on exit (not on SIGKILL)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.owner)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            return self
        raise ScanLockedError(f"could not take the lock {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        same_host = host == self.owner["host"]
        if isinstance(pid, int) and same_host and not _pid_alive(pid):
            warnings.warn(
                f"{self.path.parent}: taking over the lock of a scan that is gone "
                f"(pid {pid} on {host}, started {holder.get('started')})",
                stacklevel=3,
            )
            self.path.unlink(missing_ok=True)
            return
        who = f"pid {pid} on {host}, started {holder.get('started')}" if holder else "unreadable lock file"
        hint = "" if same_host else f"; if that scan is dead, delete {self.path}"
        raise ScanLockedError(
            f"{self.path.parent} is being written by another scan ({who}); wait for it to "
            f"finish or use another --out folder{hint}"
        )

    def __exit__(self, *exc) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
