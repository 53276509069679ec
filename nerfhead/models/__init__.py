"""The talking-head model: tri-plane face field, audio encoder + smoother, torso field,
renderer, and ``TalkingHead`` tying them together (see ``talking_head.render_frame``)."""

from nerfhead.models.config import BLENDSHAPE_INDEX, UPPER_FACE, ModelConfig
from nerfhead.models.rays import Camera, nerf_matrix_to_ngp

__all__ = ["BLENDSHAPE_INDEX", "UPPER_FACE", "Camera", "ModelConfig", "nerf_matrix_to_ngp"]
