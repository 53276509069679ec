"""Floaters: occupied pieces of the occupancy grid apart from the head are cleared on loading
(``OccupancyGrid.prune_floaters``, ``load_run(prune_floaters=True)``), checked on grids built
cell by cell, where which cells must go is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nerfhead.ops.occupancy import OccupancyGrid, morton3d_reference


def _grid(G: int, pieces: list[np.ndarray], cascades: int = 1) -> OccupancyGrid:
    """A grid whose occupied cells are ``pieces`` ([M, 3] integer coordinates each, in every
    cascade), the rest empty."""
    g = OccupancyGrid(bound=1.0, resolution=G, cascades=cascades)
    for cells in pieces:
        codes = morton3d_reference(torch.from_numpy(cells).int()).long()
        g.density_grid[:, codes] = 100.0
    g.repack(0.01)
    return g


def _box(lo, hi) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"),
                    -1).reshape(-1, 3)


def _occupied(g: OccupancyGrid, cells: np.ndarray, cascade: int = 0) -> np.ndarray:
    bits = np.unpackbits(g.bitfield.numpy(), bitorder="little").reshape(g.cascades, -1)
    return bits[cascade, morton3d_reference(torch.from_numpy(cells).int()).long().numpy()]


def test_pieces_apart_from_the_head_go_and_touching_ones_stay():
    """At 32^3: a head (a 10^3 box), a speck 3 cells above it (2 empty cells between), a
    piece touching it corner to corner, and a lone cell far away. The speck and the lone cell
    are cleared, the touching piece and the head kept; densities are left as they were."""
    head, touching = _box((10, 10, 10), (20, 20, 20)), _box((20, 20, 20), (22, 22, 22))
    speck, lone = _box((14, 22, 14), (16, 24, 16)), np.array([[2, 30, 3]])
    g = _grid(32, [head, touching, speck, lone])
    density = g.density_grid.clone()
    found = g.prune_floaters()
    assert found == {"cells": 8 + 1, "pieces": 2, "kept": 1000 + 8}
    assert _occupied(g, head).all() and _occupied(g, touching).all()
    assert not _occupied(g, speck).any() and not _occupied(g, lone).any()
    assert torch.equal(g.density_grid, density)
    assert g.prune_floaters() == {"cells": 0, "pieces": 0, "kept": 1008}  # nothing left to do
    g.repack(0.01)  # training's next update brings the cells back: pruning is for rendering
    assert _occupied(g, speck).all()
    before = g.bitfield.clone()
    with g.floaters_pruned() as found:  # training's validation renders: pruned, then restored
        assert found["cells"] == 9 and not _occupied(g, speck).any()
    assert torch.equal(g.bitfield, before)


def test_the_reach_scales_with_the_resolution():
    """At 64^3 a piece within 2 cells of the head (the distance of one cell at 32^3) is part
    of it; one 4 cells off is not."""
    head = _box((20, 20, 20), (40, 40, 40))
    near, far = _box((41, 28, 28), (43, 30, 30)), _box((28, 43, 28), (30, 45, 30))
    g = _grid(64, [head, near, far])
    assert g.prune_floaters() == {"cells": 8, "pieces": 1, "kept": 8000 + 8}
    assert _occupied(g, near).all() and not _occupied(g, far).any()


def test_each_cascade_is_pruned_on_its_own_and_a_single_piece_is_left_alone():
    head, speck = _box((4, 4, 4), (10, 10, 10)), np.array([[14, 1, 1]])
    g = _grid(16, [head, speck], cascades=2)
    assert g.prune_floaters() == {"cells": 2, "pieces": 2, "kept": 2 * 216}
    assert not _occupied(g, speck, 1).any() and _occupied(g, head, 1).all()
    lone = _grid(16, [head])
    before = lone.bitfield.clone()
    assert lone.prune_floaters() == {"cells": 0, "pieces": 0, "kept": 216}
    assert torch.equal(lone.bitfield, before)
    fresh = OccupancyGrid(resolution=16)  # untrained: every cell marked occupied, one piece
    assert fresh.prune_floaters()["cells"] == 0


def test_loading_a_run_clears_its_floaters_unless_asked_to_keep_them(tmp_path):
    """A trained run with a speck put into its grid far from everything: load_run clears it
    (said in LoadedRun.floaters), --keep-floaters (prune_floaters=False) renders it."""
    from nerfhead.data.synthetic import make_dataset
    from nerfhead.train.checkpoint import list_checkpoints, load_run
    from nerfhead.train.config import load_configs
    from nerfhead.train.trainer import Trainer

    data = make_dataset(tmp_path / "d", num_frames=12, size=32)
    cfg = load_configs("tiny", {"data": {"image_size": 32, "num_rays": 128, "audio": "mel"},
                                "train": {"iters": 2, "checkpoint_every": 2, "val_every": 0,
                                          "lipsync_check_frames": 0}})
    Trainer(data, cfg, tmp_path / "run").fit(progress=False)
    path = list_checkpoints(tmp_path / "run")[-1]
    ck = torch.load(path, weights_only=False)
    G = int(round(ck["model"]["grid.density_grid"].shape[1] ** (1 / 3)))
    dg = torch.zeros_like(ck["model"]["grid.density_grid"])
    dg[0, morton3d_reference(torch.from_numpy(_box((8, 8, 8), (24, 24, 24))).int()).long()] = 50.0
    dg[0, morton3d_reference(torch.tensor([[1, 1, 30]]).int()).long()] = 50.0
    grid = OccupancyGrid(resolution=G)
    grid.density_grid.copy_(dg)
    grid.repack(0.01)
    ck["model"]["grid.density_grid"], ck["model"]["grid.bitfield"] = dg, grid.bitfield.clone()
    torch.save(ck, path)
    run = load_run(tmp_path / "run")
    assert run.floaters == {"cells": 1, "pieces": 1, "kept": 16 ** 3}
    assert run.floaters_note() == "1 occupancy cell in 1 piece apart from the head cleared (4096 kept)"
    assert not _occupied(run.model.grid, np.array([[1, 1, 30]])).any()
    kept = load_run(tmp_path / "run", prune_floaters=False)
    assert kept.floaters is None and _occupied(kept.model.grid, np.array([[1, 1, 30]])).all()
    assert "--keep-floaters" in kept.floaters_note()
    with pytest.raises(ValueError):
        load_run(tmp_path / "run", audio_encoder="x")
