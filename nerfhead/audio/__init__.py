"""Audio loading and per-video-frame audio features (shared by preprocess and render)."""

from nerfhead.audio.features import (AudioError, extract, frame_windows, load_audio, log_mel,
                                     mel_filterbank, ow_available)

__all__ = ["AudioError", "extract", "frame_windows", "load_audio", "log_mel", "mel_filterbank",
           "ow_available"]
