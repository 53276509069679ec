"""One ``nerfhead batch`` per output folder at a time: ``DIR/.batch.lock`` holds the owner's
host and pid; a lock whose process is gone (on this host) is taken over."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path


class BatchLocked(RuntimeError):
    """Another batch is writing into the same folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BatchLock:
    def __init__(self, out: Path):
        self.path = Path(out) / ".batch.lock"
        self.held = False

    def acquire(self) -> "BatchLock":
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    owner = {}
                if owner.get("host") == me["host"] and not _alive(int(owner.get("pid", 0))):
                    self.path.unlink(missing_ok=True)  # its process is gone: a stale lock
                    continue
                raise BatchLocked(
                    f"{self.path.parent} is in use by another nerfhead batch (host "
                    f"{owner.get('host', '?')}, pid {owner.get('pid', '?')}); wait for it to end, "
                    f"or delete {self.path} if that process no longer exists") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise BatchLocked(f"could not take {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
