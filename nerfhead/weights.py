"""One resolver for every model file nerfhead uses.

Lookup order for a weights file: an explicit path, the directory in ``NERFHEAD_WEIGHTS``
(or a ``weights_dir`` argument), the user cache (``$XDG_CACHE_HOME/nerfhead`` or
``~/.cache/nerfhead``), then a download from the official address, checked against its
SHA-256 and written atomically into the cache. When a file cannot be found or fetched,
``WeightsUnavailable`` says what was tried, so callers can report the step as unavailable
instead of silently substituting something else.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nerfhead.fileio import atomic_path


class WeightsUnavailable(RuntimeError):
    """A model file could not be found locally nor downloaded."""


@dataclass(frozen=True)
class WeightsFile:
    """A model file nerfhead knows how to find."""

    name: str  #: file name (or relative path) under a weights directory
    url: str | None  #: official download address; None when there is no public one
    sha256: str | None = None  #: expected digest of the download; None skips the check
    note: str = ""  #: how to obtain it when it cannot be downloaded


KNOWN: dict[str, WeightsFile] = {
    "face_landmarker": WeightsFile(
        "face_landmarker.task",
        "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
        "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    ),
    "sfm": WeightsFile(
        "sfm/sfm_shape_3448.bin",
        "https://github.com/patrikhuber/eos/raw/master/share/sfm_shape_3448.bin",
        None,
        "the Surrey Face Model files (sfm_shape_3448.bin, expression_blendshapes_3448.bin, "
        "ibug_to_sfm.txt) from the eos repository's share/ folder",
    ),
    "parsing_bisenet": WeightsFile(
        "parsing_bisenet.pth",
        "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
        None,
    ),
    "lpips_alex": WeightsFile(
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        None,
    ),
    "syncnet": WeightsFile(
        "syncnet_v2.model",
        "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        None,
    ),
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nerfhead"


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    env = os.environ.get("NERFHEAD_WEIGHTS")
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    dirs.append(cache_dir())
    return dirs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(spec: WeightsFile, dest: Path, timeout: float) -> None:
    with atomic_path(dest, suffix=".part") as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as r:
            while chunk := r.read(1 << 20):
                out.write(chunk)
        if spec.sha256 and _sha256(tmp) != spec.sha256:
            raise WeightsUnavailable(f"download of {spec.url} does not match its SHA-256")


def resolve(key: str, path: str | os.PathLike | None = None, weights_dir=None,
            download: bool = True, timeout: float = 30.0) -> Path:
    """Local path of model file ``key`` (see ``KNOWN``), downloading it if allowed.

    Raises WeightsUnavailable naming every place looked at and why the download failed.
    """
    spec = KNOWN[key]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WeightsUnavailable(f"{key}: {p} does not exist")
        return p
    tried = []
    for d in search_dirs(weights_dir):
        for candidate in dict.fromkeys((d / spec.name, d / Path(spec.name).name)):
            tried.append(str(candidate))  # (once: the two are one where the name has no folder)
            if candidate.is_file():
                return candidate
    reason = "downloads disabled"
    if download and spec.url and os.environ.get("NERFHEAD_OFFLINE", "0") != "1":
        dest = cache_dir() / spec.name
        try:
            _download(spec, dest, timeout)
            return dest
        except Exception as e:  # network errors come in many types; report, do not hide
            reason = f"download from {spec.url} failed: {e}"
    elif not spec.url:
        reason = "no public download address"
    hint = f" Obtain {spec.note}." if spec.note else ""
    raise WeightsUnavailable(f"{key} weights ({spec.name}) unavailable: not found in "
                             f"{', '.join(tried)}; {reason}.{hint} Set NERFHEAD_WEIGHTS to a "
                             f"directory that holds it.")
