"""Dataset folders: transforms, lazily decoded frames (bounded LRU cache), ray sampling."""

from nerfhead.data.dataset import (
                                   DataConfig,
                                   DatasetError,
                                   RayBatch,
                                   TalkingHeadDataset,
                                   load_audio_features,
                                   read_transforms,
)

__all__ = ["DataConfig", "DatasetError", "RayBatch", "TalkingHeadDataset",
           "load_audio_features", "read_transforms"]
