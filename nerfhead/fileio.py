"""Safe file output shared by every component: atomic writes, checked image writes, disk-space
and output-location checks, and clean-up of the temporary files a killed run leaves behind.

``atomic_path(final)`` yields a temporary path beside ``final`` and renames it over ``final``
only when the block succeeds, so an interrupted run never leaves a half-written file that a
rerun would trust. ``tempfile.mkstemp`` creates files readable by the owner only; the file
gets the usual permissions (0666 minus the umask) before the rename.

Temporary names carry a marker, this host and the writing process id
(``.NAME.nhtmp-HOST-PID-XXXX.ext``): a process killed with SIGKILL cannot remove its own
temporaries, so ``clean_stale_temps`` removes those whose process is gone (never those of a
live process, never files without the marker).

A full disk rarely says so: ``np.save`` raises an OSError without an errno, ``cv2.imwrite``
returns False, ffmpeg exits with a code. Every writer here checks the free space at the moment
a write fails (before its temporary is removed, which frees the space again) and raises
``DiskFullError`` naming the device, the free space and, when known, the space needed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("nerfhead.fileio")

TEMP_MARK = "nhtmp"  #: marks the temporary files and folders nerfhead creates
FULL_BELOW = 1 << 20  #: a write that fails with less than this free failed for lack of space
MB = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temp_prefix(name: str) -> str:
    """Prefix of a temporary beside the file or folder ``name`` (see the module docstring)."""
    return f".{name}.{TEMP_MARK}-{_host_tag()}-{os.getpid()}-"


# ----------------------------------------------------------------------------- disk space
def human_size(n: float) -> str:
    """``12 KB``, ``3.4 MB``, ``250 MB``, ``1.2 GB``."""
    for unit, size in (("GB", 1 << 30), ("MB", MB)):
        if n >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{max(1, round(n / 1024))} KB" if n > 0 else "0 KB"


class DiskFullError(OSError):
    """No space left on the device holding ``path``; the message names the device and sizes.

    ``free`` is measured when the error is made: make it where the write failed, before any
    temporary is removed (``with_need`` re-words it later without measuring again)."""

    def __init__(self, path, needed: int | None = None, what: str | None = None,
                 free: int | None = None):
        path = Path(path)
        self.path, self.needed, self.what = str(path), needed, what
        self.free = free_bytes(path) if free is None else free
        mount, fstype = mount_point(path)
        self.mount = str(mount)
        dev = f"{mount} ({fstype})" if fstype else str(mount)
        need = f"; needs about {human_size(needed)}" if needed else ""
        doing = f" while writing {what}" if what else ""
        super().__init__(errno.ENOSPC,
                         f"no space left on device {dev}: {human_size(self.free)} free{need}"
                         f"{doing} (in {path}). Free some space or write to another disk, then "
                         "rerun")

    def with_need(self, needed: int | None, path=None, what: str | None = None) -> "DiskFullError":
        """The same full disk, worded with what the whole step needs."""
        return DiskFullError(path or self.path, needed, what or self.what, free=self.free)

    def __str__(self) -> str:  # OSError's default puts "[Errno 28]" first; keep the headline
        return self.strerror


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path) -> int:
    """Bytes available to this user on the filesystem that holds (or would hold) ``path``."""
    return shutil.disk_usage(_existing(Path(path))).free


def mount_point(path) -> tuple[Path, str]:
    """(mount point, filesystem type or '') of the filesystem holding ``path``."""
    p = _existing(Path(path))
    if p.is_file():
        p = p.parent
    while not os.path.ismount(p) and p.parent != p:
        p = p.parent
    fstype = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[1].replace("\\040", " ") == str(p):
                fstype = parts[2]  # the last entry for a mount point is the visible one
    return p, fstype


def is_disk_full(path) -> bool:
    """Whether the filesystem of ``path`` has (almost) no space left."""
    try:
        return free_bytes(path) < FULL_BELOW
    except OSError:
        return False


def disk_full_cause(exc: BaseException | None) -> DiskFullError | None:
    """The DiskFullError in ``exc``'s chain (``raise ... from``/during handling), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DiskFullError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def require_space(path, needed: int, what: str, margin: float = 1.1) -> None:
    """Raise DiskFullError before a write of about ``needed`` bytes that cannot fit."""
    if needed > 0 and free_bytes(path) < needed * margin:
        raise DiskFullError(path, needed, what)


def raise_if_disk_full(path, exc: BaseException, needed: int | None = None,
                       what: str | None = None) -> None:
    """Call where a write just failed: a full disk becomes DiskFullError (from ``exc``)."""
    if isinstance(exc, DiskFullError):
        return
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or is_disk_full(path):
        raise DiskFullError(path, needed, what) from exc


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    ``suffix`` defaults to ``final``'s, so writers that pick a format from the extension
    (cv2.imwrite, savefig) see the right one. A failure on a full disk is re-raised as
    DiskFullError (the free space is measured before the temporary is removed).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=temp_prefix(final.name),
                               suffix=suffix if suffix is not None else final.suffix)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, final)
        except Exception as e:
            raise_if_disk_full(final.parent, e, what=final.name)
            raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(final: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path_str)`` and move the result to ``final`` atomically."""
    with atomic_path(final) as tmp:
        write(str(tmp))


def make_temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A marked temporary folder in ``parent`` (to be renamed to ``name`` when complete), with
    the usual permissions (``mkdtemp`` makes it private to the owner)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(name)))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def write_image(path: str | os.PathLike, image, params: list[int] | None = None) -> None:
    """``cv2.imwrite`` that raises instead of returning False (DiskFullError on a full disk)."""
    import cv2

    path = Path(path)
    ok = cv2.imwrite(str(path), image, params or [])
    if not ok:
        if is_disk_full(path.parent):
            raise DiskFullError(path.parent, None, path.name)
        if not path.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"cannot write image: folder {path.parent} "
                                                  "does not exist", str(path))
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(errno.EACCES, f"cannot write image into {path.parent}: "
                                                "permission denied", str(path))
        raise OSError(errno.EIO, f"cannot write image {path} ({image.dtype} "
                                 f"{tuple(image.shape)}): OpenCV's encoder failed")


# ----------------------------------------------------------------------------- output checks
class OutputLocationError(OSError):
    """An output location cannot be used (a file where a folder is needed or the reverse,
    a read-only filesystem, no permission); checked before the work starts."""

    def __str__(self) -> str:
        return self.strerror


def _probe_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the only test that sees read-only mounts,
    immutable folders and root-without-permission alike."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=temp_prefix("write-check"))
    except OSError as e:
        if e.errno == errno.EROFS:
            reason = f"{folder} is on a read-only filesystem ({mount_point(folder)[0]})"
        elif e.errno in (errno.EACCES, errno.EPERM):
            reason = f"no permission to write in {folder}"
        elif e.errno == errno.ENOSPC:
            raise DiskFullError(folder, None, what) from e
        else:
            reason = f"cannot write in {folder}: {e.strerror or e}"
        raise OutputLocationError(e.errno or errno.EACCES,
                                  f"{what}: {reason}; choose a writable location") from e
    os.close(fd)
    os.unlink(probe)


def _make_dirs(folder: Path, what: str) -> None:
    parent = _existing(folder)
    if not parent.is_dir():
        raise OutputLocationError(errno.ENOTDIR, f"{what}: {parent} is a file, so the folder "
                                                 f"{folder} cannot be created inside it")
    _probe_writable(parent, what)
    folder.mkdir(parents=True, exist_ok=True)


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Make sure ``path`` is (or can be made) a writable folder; create it. ``what`` names
    the option or output in messages (e.g. ``"nerfhead train --out"``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputLocationError(errno.ENOTDIR, f"{what} {path} is an existing file, not a "
                                                 "folder; give a folder path (new or existing)")
    if path.is_dir():
        _probe_writable(path, what)
    else:
        _make_dirs(path, what)
    return path


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """``check_output_dir`` for the span of a command's work: if the work fails, the folders
    made here that are still empty are removed again, so a failed command leaves no empty
    output folder to be taken for a result (a folder that existed, or got files, is kept)."""
    path = Path(path)
    made, p = [], path
    while not p.exists() and p != p.parent:  # the folders this call will create, deepest first
        made.append(p)
        p = p.parent
    check_output_dir(path, what)
    try:
        yield path
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: something was written there; keep it and its parents
                break
        raise


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Make sure the file ``path`` can be written (its folder is created); an existing file
    will be replaced, an existing folder is an error."""
    path = Path(path)
    if path.is_dir():
        raise OutputLocationError(errno.EISDIR, f"{what} {path} is an existing folder; give a "
                                                f"file name, e.g. {path / 'out.mp4'}")
    if path.parent.is_dir():
        _probe_writable(path.parent, what)
    else:
        _make_dirs(path.parent, what)
    return path


def unused_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there, else the first of ``STEM-2.EXT``, ``STEM-3.EXT`` ... that is
    free: for default output names, which must not replace an earlier output."""
    path = Path(path)
    candidate, k = path, 2
    while candidate.exists() or candidate.is_symlink():
        candidate, k = path.with_name(f"{path.stem}-{k}{path.suffix}"), k + 1
    return candidate


def move_aside(folder: str | os.PathLike) -> Path:
    """Rename ``folder`` to ``folder.replaced-<UTC time>`` beside it (nothing is deleted)."""
    import datetime as _dt

    folder = Path(folder)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    dest = folder.with_name(f"{folder.name}.replaced-{stamp}")
    k = 1
    while dest.exists():
        dest, k = folder.with_name(f"{folder.name}.replaced-{stamp}-{k}"), k + 1
    os.replace(folder, dest)
    return dest


# ----------------------------------------------------------------------------- stale temps
def _owner_gone(name: str) -> bool:
    """Whether a marked temporary's process has ended (on this host)."""
    try:
        tail = name.split(f".{TEMP_MARK}-", 1)[1]
        host, pid = tail.split("-")[:2]
        pid = int(pid)
    except (IndexError, ValueError):
        return False
    if host != _host_tag():
        return False  # another machine's process (shared disk): not ours to judge
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _stale_temps(folder: Path, depth: int) -> list[Path]:
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and f".{TEMP_MARK}-" in entry.name:
            if _owner_gone(entry.name):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed.append(Path(entry.path))
        elif depth > 0 and not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            removed += _stale_temps(Path(entry.path), depth - 1)
    return removed


def clean_stale_temps(folder: str | os.PathLike, depth: int = 1) -> list[Path]:
    """Remove the temporaries of dead nerfhead processes in ``folder`` and, up to ``depth``
    levels, its subfolders. Returns what was removed (and logs it)."""
    folder = Path(folder)
    removed = _stale_temps(folder, depth) if folder.is_dir() else []
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted run in %s: %s",
                    len(removed), folder, ", ".join(str(p.relative_to(folder)) for p in removed[:5])
                    + (" ..." if len(removed) > 5 else ""))
    return removed
