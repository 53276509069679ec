"""The Surrey Face Model (SFM, 3448 vertices) as torch tensors, for landmark fitting.

Files (``/work/shared/weights/sfm`` or the directory of ``nerfhead.weights.resolve("sfm")``):
``sfm_shape_3448.bin`` (mean + 63 PCA identity components), ``expression_blendshapes_3448.bin``
(6 blendshapes: anger, disgust, fear, happiness, sadness, surprise -- no jaw opening),
``ibug_to_sfm.txt`` (iBUG-68 -> vertex) and ``sfm_model_contours.json``. They are read with
``eos-py`` (``eos.morphablemodel.load_model`` / ``load_blendshapes``, ``eos.core.LandmarkMapper``).

Units and frame. The SFM is in millimetres with x towards the subject's left (image right in a
frontal view), y up and z out of the face (towards a frontal camera). We keep the axes, convert
to METRES and re-centre at an approximate head centre: x, y of the vertex centroid and z 95 mm
behind the nose tip (half a typical head length), so a NeRF box around the world origin holds
the whole head, hair included.

iBUG landmarks. ``ibug_to_sfm.txt`` maps 50 of the 68 points to vertices (0-based iBUG index ->
vertex in ``landmark_vertices``). It has no entries for the 16 contour points (iBUG 1-8 and
10-17, 0-based 0-7 and 9-16) because where the 2D jaw line lands on the 3D mesh depends on the
head pose; and none for the inner mouth corners (iBUG 61, 65), which we drop. For the contour we
provide the model's contour polylines (``sfm_model_contours.json``: 17 vertices per side, temple
to chin), densified by linear interpolation, so a fit can match each detected contour landmark to
the nearest projected point of its side's polyline (a point-to-curve distance, as eos does).
``preprocess.focal`` gives these points zero weight by default (dropped; see its
``landmark_weights``): the nearest-point switch makes the loss non-smooth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SFM_FILES = ("sfm_shape_3448.bin", "expression_blendshapes_3448.bin", "ibug_to_sfm.txt",
             "sfm_model_contours.json")
HEAD_CENTRE_BEHIND_NOSE_MM = 95.0  #: depth of the re-centring point behind the nose tip
NOSE_TIP_VERTEX = 114  #: iBUG 31 (nose tip) in the SFM
RIGHT_CONTOUR_IBUG = tuple(range(0, 8))  #: 0-based iBUG contour points on the subject's right
LEFT_CONTOUR_IBUG = tuple(range(9, 17))  #: ... and on the subject's left
CONTOUR_SUBDIVISIONS = 4  #: points per polyline segment when densifying the model contours


class FaceModelError(RuntimeError):
    """The face model files are missing or malformed."""


@dataclass
class FaceModel:
    """SFM tensors (float32, metres, head-centred). V = 3448 vertices."""

    mean: torch.Tensor  #: [V, 3]
    id_basis: torch.Tensor  #: [V, 3, 63], PCA components scaled by their std-devs (coeff ~ N(0,1))
    exp_basis: torch.Tensor  #: [V, 3, 6], expression blendshape offsets (coeff 1 = full expression)
    triangles: torch.Tensor  #: [T, 3] int64 vertex indices
    landmark_ibug: torch.Tensor  #: [L] 0-based iBUG indices that have a fixed vertex
    landmark_vertices: torch.Tensor  #: [L] their SFM vertex indices
    contour_ibug: torch.Tensor  #: [16] 0-based iBUG contour indices (right side then left)
    contour_side: torch.Tensor  #: [16] 0 = right polyline, 1 = left polyline
    contour_a: torch.Tensor  #: [2, P] first vertex of each densified polyline point, per side
    contour_b: torch.Tensor  #: [2, P] second vertex
    contour_t: torch.Tensor  #: [2, P] interpolation weight of the second vertex
    centre_mm: np.ndarray  #: [3] the re-centring point in the original SFM millimetres
    expression_names: tuple[str, ...] = ()

    @property
    def num_id(self) -> int:
        return self.id_basis.shape[-1]

    @property
    def num_exp(self) -> int:
        return self.exp_basis.shape[-1]

    def to(self, device) -> "FaceModel":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return FaceModel(**moved)

    def shape(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor,
              vertices: torch.Tensor | None = None) -> torch.Tensor:
        """Vertices [..., V', 3] for ``id_coeff`` [..., 63] and ``exp_coeff`` [..., 6].

        ``vertices`` (index tensor) restricts the evaluation to a subset (cheap landmark fits).
        Leading dims of the two coefficient tensors broadcast.
        """
        mean, idb, exb = self.mean, self.id_basis, self.exp_basis
        if vertices is not None:
            mean, idb, exb = mean[vertices], idb[vertices], exb[vertices]
        out = mean + torch.einsum("vck,...k->...vc", idb, id_coeff)
        return out + torch.einsum("vck,...k->...vc", exb, exp_coeff)

    def contour_points(self, verts: torch.Tensor, contour_vertices: torch.Tensor) -> torch.Tensor:
        """Densified contour polylines [..., 2, P, 3] from vertices ``verts`` [..., C, 3] that
        were evaluated at ``contour_vertices`` (= ``contour_vertex_ids()``)."""
        ia, ib = self.contour_local_index(contour_vertices)
        t = self.contour_t.to(verts)[..., None]
        return verts[..., ia, :] * (1 - t) + verts[..., ib, :] * t

    def contour_local_index(self, contour_vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of ``contour_a`` / ``contour_b`` [2, P] within ``contour_vertices``."""
        ia = torch.searchsorted(contour_vertices, self.contour_a.to(contour_vertices.device))
        ib = torch.searchsorted(contour_vertices, self.contour_b.to(contour_vertices.device))
        return ia, ib

    def contour_vertex_ids(self) -> torch.Tensor:
        """Sorted unique vertex ids used by the contour polylines."""
        return torch.unique(torch.cat([self.contour_a.flatten(), self.contour_b.flatten()]))


def sfm_dir(path: str | Path | None = None) -> Path:
    """The folder with the SFM files: ``path`` if given, else the resolver's ``sfm`` entry."""
    if path is not None:
        folder = Path(path)
        folder = folder.parent if folder.is_file() else folder
    else:
        from nerfhead.weights import resolve

        folder = resolve("sfm").parent
    missing = [f for f in SFM_FILES if not (folder / f).is_file()]
    if missing:
        raise FaceModelError(f"Surrey Face Model folder {folder} lacks {', '.join(missing)}")
    return folder


def _densify(polyline: list[int], sub: int) -> tuple[list[int], list[int], list[float]]:
    a, b, t = [], [], []
    for v0, v1 in zip(polyline[:-1], polyline[1:]):
        for k in range(sub):
            a.append(v0), b.append(v1), t.append(k / sub)
    a.append(polyline[-2]), b.append(polyline[-1]), t.append(1.0)
    return a, b, t


def load_face_model(path: str | Path | None = None) -> FaceModel:
    """Load the SFM from ``path`` (folder or any file in it) or the weights resolver."""
    try:
        import eos
    except ImportError as e:  # eos-py is a small wheel without dependencies
        raise FaceModelError("the Surrey Face Model needs eos-py (pip install eos-py)") from e
    folder = sfm_dir(path)
    model = eos.morphablemodel.load_model(str(folder / "sfm_shape_3448.bin"))
    shapes = eos.morphablemodel.load_blendshapes(str(folder / "expression_blendshapes_3448.bin"))
    mapper = eos.core.LandmarkMapper(str(folder / "ibug_to_sfm.txt"))
    contours = json.loads((folder / "sfm_model_contours.json").read_text())["model_contour"]

    pca = model.get_shape_model()
    mean_mm = np.asarray(pca.get_mean(), np.float64).reshape(-1, 3)
    id_mm = np.asarray(pca.get_rescaled_pca_basis(), np.float64).reshape(-1, 3, pca.get_num_principal_components())
    exp_mm = np.stack([np.asarray(s.deformation, np.float64).reshape(-1, 3) for s in shapes], -1)
    if exp_mm.shape[0] != mean_mm.shape[0]:
        raise FaceModelError(f"{folder}: blendshapes have {exp_mm.shape[0]} vertices, "
                             f"the shape model {mean_mm.shape[0]}")
    centre = mean_mm.mean(0)
    centre[2] = mean_mm[NOSE_TIP_VERTEX, 2] - HEAD_CENTRE_BEHIND_NOSE_MM

    pairs = sorted((int(k) - 1, int(v)) for k, v in mapper.get_mappings().items())
    right_a, right_b, right_t = _densify(contours["right_contour"], CONTOUR_SUBDIVISIONS)
    left_a, left_b, left_t = _densify(contours["left_contour"], CONTOUR_SUBDIVISIONS)
    f32 = dict(dtype=torch.float32)
    return FaceModel(
        mean=torch.tensor((mean_mm - centre) / 1000.0, **f32),
        id_basis=torch.tensor(id_mm / 1000.0, **f32),
        exp_basis=torch.tensor(exp_mm / 1000.0, **f32),
        triangles=torch.tensor(np.asarray(pca.get_triangle_list(), np.int64)),
        landmark_ibug=torch.tensor([p[0] for p in pairs]),
        landmark_vertices=torch.tensor([p[1] for p in pairs]),
        contour_ibug=torch.tensor(RIGHT_CONTOUR_IBUG + LEFT_CONTOUR_IBUG),
        contour_side=torch.tensor([0] * len(RIGHT_CONTOUR_IBUG) + [1] * len(LEFT_CONTOUR_IBUG)),
        contour_a=torch.tensor([right_a, left_a]),
        contour_b=torch.tensor([right_b, left_b]),
        contour_t=torch.tensor([right_t, left_t], **f32),
        centre_mm=centre,
        expression_names=tuple(s.name for s in shapes),
    )
