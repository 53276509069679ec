"""``data.preload``: a training split's frames decoded once onto the training device.

The dataset otherwise decodes each frame on use into an LRU cache and gathers a step's ray
colours on the CPU. On an H200 that was half of a head-stage step (four frames per step, a
cache that a 228-frame clip already overflows); preloaded, the colours are one gather per
image on the device (docs/benchmarks.md). The colours are the cache's bit for bit.

``auto`` preloads when the frames fit ``PRELOAD_MEMORY_SHARE`` of the device's free memory
and, on the CPU, when the run draws at least as many frames as the clip has (else decoding
every frame first costs more than the steps' own decodes).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from nerfhead.data.dataset import TalkingHeadDataset

log = logging.getLogger("nerfhead.data")

#: data.preload = auto preloads the training frames when they take at most this share of the
#: device's free memory at the start: on a GPU the rest is the training's (7 GiB at the head
#: preset); on the CPU the rest is everything else the machine runs, other trainings of
#: ``nerfhead batch`` among them (each measures the same available RAM when they start together)
PRELOAD_MEMORY_SHARE = {"cuda": 0.5, "cpu": 0.1}

#: byte value -> value / 255 as the CPU computes it: preloaded frames turn their bytes into
#: colours through this table, because a GPU's ``x / 255.0`` multiplies by the reciprocal,
#: which is one ulp off for about half the byte values, and the colours must be the same bits
#: as the cache's (``torch.from_numpy(img)[v, u].float() / 255.0`` on the CPU)
_UNIT = torch.arange(256, dtype=torch.float32) / 255.0


@dataclass
class PreloadedFrames:
    """Every frame of a split decoded once, uint8 on one device (``preload_frames``)."""

    images: Tensor  #: [N, H, W, 3] targets (gt_imgs)
    backgrounds: Tensor | None  #: [N, H, W, 3] head_background of each frame (None: not loaded)
    plate: Tensor  #: [H, W, 3] bc.jpg
    unit: Tensor  #: [256] float32 on the device: _UNIT
    nbytes: int  #: bytes held on the device
    seconds: float  #: wall time of the decode

    def colours(self, f: Tensor, u: Tensor, v: Tensor, bg_kind: str) -> tuple[Tensor, Tensor]:
        """Target and background colours [R, 3] at frame ``f``, pixel (u, v) per ray: one
        copy of the coordinates to the device, one gather per image."""
        f, v, u = torch.stack([f, v, u]).to(self.images.device).unbind()
        bg = self.plate[v, u] if bg_kind == "plate" else self.backgrounds[f, v, u]
        return self.unit[self.images[f, v, u].long()], self.unit[bg.long()]


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.0f} MB" if nbytes >= 1e7 else f"{nbytes / 1e6:.2f} MB"


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: a CUDA device's free memory, the CPU's available RAM
    (``MemAvailable``: free plus what the kernel can reclaim); None where unknown
    (data.preload = auto then keeps the cache)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # not Linux: the free pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _keep_cache_because(ds: TalkingHeadDataset, device: torch.device, nbytes: int,
                        draws: int | None) -> str | None:
    """Why data.preload = auto keeps the cache here (logged), or None to preload."""
    free = free_device_memory(device)
    if free is None:
        return ""  # a device whose memory is unknown: the cache, nothing to say
    share = PRELOAD_MEMORY_SHARE.get(device.type, 0.5)
    if nbytes > share * free:
        return (f"the {len(ds)} training frames need {_mb(nbytes)}, more than {100 * share:.0f}% "
                f"of the {_mb(free)} free on {device}: frames are decoded on use into the cache "
                f"(data.cache_size {ds.cfg.cache_size}) instead, slower")
    if device.type == "cpu" and draws is not None and draws < len(ds):
        return (f"the run's steps draw {draws} frames, fewer than the clip's {len(ds)}: frames "
                "are decoded on use into the cache")
    return None


def preload_frames(ds: TalkingHeadDataset, device: torch.device, head_backgrounds: bool = True,
                   progress: bool = False, draws: int | None = None) -> PreloadedFrames | None:
    """``ds``'s frames decoded onto ``device`` per its ``cfg.preload``, on a thread pool
    (OpenCV's decoders release the GIL); None where the cache is kept (auto says why)."""
    mode = ds.cfg.preload
    H, W = ds.size
    n = len(ds)
    # without torso_imgs every frame's head background is the plate: kept once
    per_frame = 2 if head_backgrounds and ds.has_torso_imgs else 1
    nbytes = (n * per_frame + 1) * H * W * 3
    if mode == "never":
        return None
    if mode == "auto" and (why := _keep_cache_because(ds, device, nbytes, draws)) is not None:
        if why:  # on a GPU the cache is the slow path; on the CPU it is the usual one
            (log.warning if device.type == "cuda" else log.info)("data.preload: %s", why)
        return None
    from tqdm import tqdm

    t0 = time.perf_counter()
    plate = torch.from_numpy(ds.background()).to(device)  # read before the threads use it
    images = torch.empty((n, H, W, 3), dtype=torch.uint8, device=device)
    backgrounds = (images.new_empty((n, H, W, 3)) if per_frame == 2 else
                   plate.expand(n, H, W, 3) if head_backgrounds else None)

    def load(i: int) -> None:
        images[i].copy_(torch.from_numpy(ds.decode_image(i)))
        if per_frame == 2:
            backgrounds[i].copy_(torch.from_numpy(ds.decode_head_background(i)))

    pool = ThreadPoolExecutor(min(16, os.cpu_count() or 1), thread_name_prefix="nerfhead-preload")
    try:
        for _ in tqdm(pool.map(load, range(n)), total=n, disable=not progress, unit="frame",
                      desc="preload frames", dynamic_ncols=True):
            pass
    finally:  # a frame that failed: the rest are not decoded for nothing
        pool.shutdown(cancel_futures=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    log.info("data.preload: %d training frames (%s) decoded onto %s: %s in %.1f s",
             n, "target + head background" if per_frame == 2 else
             "target; the plate behind every head" if head_backgrounds else "target + plate",
             device, _mb(nbytes), seconds)
    return PreloadedFrames(images, backgrounds, plate, _UNIT.to(device), nbytes, seconds)
