"""Atomic file writes shared by every component.

``atomic_path(final)`` yields a temporary path beside ``final`` and renames it over ``final``
only when the block succeeds, so an interrupted run never leaves a half-written file that a
rerun would trust. ``tempfile.mkstemp`` creates files readable by the owner only; the file
gets the usual permissions (0666 minus the umask) before the rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    ``suffix`` defaults to ``final``'s, so writers that pick a format from the extension
    (cv2.imwrite, savefig) see the right one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.",
                               suffix=suffix if suffix is not None else final.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(final: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path_str)`` and move the result to ``final`` atomically."""
    with atomic_path(final) as tmp:
        write(str(tmp))
