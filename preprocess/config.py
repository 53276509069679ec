"""The preprocessing config: one typed section per step, loaded from ``configs/preprocess.yaml``.

Each step module owns its section's dataclass (documented field by field there); this module
only composes them, so the YAML preset has one mapping per step (``decode:``, ``landmarks:``
...) plus ``weights_dir``. Unknown keys and wrong types raise ``nerfhead.config.ConfigError``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from nerfhead.config import from_dict, load_yaml, resolve_preset
from preprocess.audio import AudioConfig, SpeechConfig
from preprocess.av_sync import AvSyncConfig
from preprocess.background import BackgroundConfig
from preprocess.bundle import BundleConfig
from preprocess.decode import DecodeConfig
from preprocess.focal import FaceFitConfig
from preprocess.landmarks import LandmarksConfig
from preprocess.parsing import ParsingConfig
from preprocess.previews import PreviewsConfig
from preprocess.scenes import ScenesConfig
from preprocess.tracking import TrackingConfig


@dataclass
class PreprocessConfig:
    """All preprocessing settings; each step reads only its own section."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    landmarks: LandmarksConfig = field(default_factory=LandmarksConfig)
    av_sync: AvSyncConfig = field(default_factory=AvSyncConfig)
    parsing: ParsingConfig = field(default_factory=ParsingConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    face_fit: FaceFitConfig = field(default_factory=FaceFitConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    previews: PreviewsConfig = field(default_factory=PreviewsConfig)
    #: folder searched first for model files (face_landmarker.task, sfm/, parsing_bisenet.pth);
    #: None: NERFHEAD_WEIGHTS, then the user cache (nerfhead.weights). Not part of any fingerprint.
    weights_dir: str | None = None
    #: processes for per-frame work (landmarks, parsing, scenes, gt/torso images, flow); None or
    #: 0 = all cores. Outputs do not depend on it. Not part of any fingerprint.
    workers: int | None = None


def load_preprocess_config(preset: str | os.PathLike | Mapping | None = "preprocess",
                           overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PreprocessConfig:
    """Defaults, then the preset (name, path or mapping), then ``{section: {field: value}}``."""
    if preset is None:
        data: dict = {}
    elif isinstance(preset, Mapping):
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in preset.items()}
    else:
        data = load_yaml(resolve_preset(preset))
    for section, values in (overrides or {}).items():
        if isinstance(values, Mapping):
            data[section] = {**(data.get(section) or {}), **values}
        else:
            data[section] = values
    data = {k: v for k, v in data.items() if v is not None or k in ("weights_dir", "workers")}
    return from_dict(PreprocessConfig, data, where="preprocess")
