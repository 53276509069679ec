"""The fast inference path of TalkingHead.render_frame against the earlier one: the
fixed-shape loop, the fused inference shader, autocast, the tiny-cuda-nn code path, the
host syncs of a frame and the static buffers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from nerfhead.models.config import InferenceConfig
from nerfhead.models.field import Conditions
from nerfhead.models.fused_mlp import mlp_unsupported, tcnn_params, tcnn_shader
from nerfhead.ops.host_sync import HostSyncCounter
from nerfhead.render.bench import synthetic_model, synthetic_pose

# Named tolerances (max abs difference of [0, 1] colours and alphas; depth in model units).
TOL_LOOP = 1e-6        # fixed loop vs compact loop, same field function: same samples, same
#                        per-ray compositing; only BLAS batch blocking can move the last bit
TOL_FUSED = 2e-6       # fused shader (merged GEMM, folded codes) vs training forward: float32
#                        sums regrouped
TOL_FUSED_DEPTH = 1e-5
TOL_BF16_CPU = 1e-2    # bfloat16 autocast on CPU: the stand-in for float16 on CUDA (8-bit
#                        mantissa, so looser than float16's 11 bits)
TOL_FP16_CUDA = 5e-3   # float16 autocast on CUDA against float32

OLD = InferenceConfig(loop="compact", fused_heads=False, precision="float32", fused_mlp=False)


def _model(backend="auto", resolution=32, seed=0):
    """Untrained tiny model made partly opaque (random plane tables, a steep density layer)
    so rays terminate early on T inside the face and pass through elsewhere."""
    m = synthetic_model("tiny", resolution, "cpu")
    m.cfg.backend = backend
    for plane in m.field.planes:
        plane.backend = backend
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for plane in m.field.planes:
            plane.table.uniform_(-1, 1, generator=g)
        m.field.sigma_net[-1].weight.mul_(20)
    m.grid.density_grid.fill_(1.0)
    m.grid.repack(0.5)
    return m


FEATS = np.random.default_rng(0).normal(size=(6, 16, 80)).astype(np.float32)
EXPR = np.random.default_rng(1).uniform(0, 1, 52).astype(np.float32)


def _render(m, inference, index=2):
    m.inference = inference
    return m.render_frame(synthetic_pose(), FEATS, index, EXPR, latent_index=1)


def _maxdiff(a, b, key):
    return float((a[key] - b[key]).abs().max())


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_render_frame_new_path_matches_the_old_one(backend):
    if backend == "cpu":
        from nerfhead.ops._loader import extension_available, extension_error

        if not extension_available():
            pytest.skip(extension_error())
    m = _model(backend)
    old = _render(m, OLD)
    a = old["head_alpha"]
    assert float(a.max()) > 0.999 and float((a > 0.999).float().mean()) > 0.1  # opaque rays
    assert float((a < 0.5).float().mean()) > 0.1  # and see-through ones
    loop_only = _render(m, InferenceConfig(fused_heads=False, precision="float32"))
    new = _render(m, InferenceConfig(fused_heads=True))  # (auto: on CUDA only)
    for key in ("rgb", "head_rgb", "head_alpha"):
        assert _maxdiff(old, loop_only, key) <= TOL_LOOP, key
        assert _maxdiff(old, new, key) <= TOL_FUSED, key
    assert _maxdiff(old, new, "depth") <= TOL_FUSED_DEPTH
    assert set(new) == set(old) and all(new[k].shape == old[k].shape for k in old)


def test_fused_shader_matches_forward_and_follows_weight_updates():
    m = _model()
    f = m.field
    cond = m.conditions(FEATS, 2, EXPR, 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(500, 3, generator=gen) * 1.6 - 0.8
    d = torch.nn.functional.normalize(torch.randn(500, 3, generator=gen), dim=-1)
    with torch.no_grad():
        ref = f(x, d, cond)
        sigma, rgb = f.inference_shader(cond)(x, d)
        assert torch.allclose(sigma, ref["sigma"], rtol=1e-5, atol=1e-6)
        assert float((rgb - ref["rgb"]).abs().max()) <= TOL_FUSED
        # an optimiser-style in-place update must reach the cached merged weights
        f.audio_att[0].weight.add_(0.05)
        f.sigma_net[0].weight.mul_(1.1)
        ref2 = f(x, d, cond)
        sigma2, rgb2 = f.inference_shader(cond)(x, d)
    assert not torch.allclose(ref2["sigma"], ref["sigma"])
    assert torch.allclose(sigma2, ref2["sigma"], rtol=1e-5, atol=1e-6)
    assert float((rgb2 - ref2["rgb"]).abs().max()) <= TOL_FUSED


def test_uncertainty_head_is_not_run_at_inference():
    m = _model()
    calls = []
    m.field.unc_net.register_forward_hook(lambda *a: calls.append(1))
    _render(m, InferenceConfig(fused_heads=True))
    assert calls == []
    _render(m, InferenceConfig(fused_heads=False))  # the training forward, uncertainty off
    assert calls == []
    _render(m, OLD)
    assert calls == []  # the old path too: render never reads the uncertainty


def test_bfloat16_autocast_on_cpu_within_tolerance():
    """CPU stand-in for float16 autocast on CUDA (same code path, another dtype)."""
    m = _model()
    old = _render(m, OLD)
    half = _render(m, InferenceConfig(precision="bfloat16", fused_heads=True))
    for key in ("rgb", "head_rgb", "head_alpha"):
        d = _maxdiff(old, half, key)
        assert 0 < d <= TOL_BF16_CPU, (key, d)  # > 0: bfloat16 really ran
    assert half["rgb"].dtype == torch.float32


def test_tcnn_path_is_logged_never_silent(caplog, monkeypatch):
    import nerfhead.models.renderer as renderer

    monkeypatch.setattr(renderer, "_announced", set())
    m = _model()
    with caplog.at_level(logging.INFO, logger="nerfhead.render"):
        _render(m, InferenceConfig())
    assert "tiny-cuda-nn's fused MLP needs CUDA tensors" in caplog.text
    import importlib.util

    if importlib.util.find_spec("tinycudann") is None:
        fn, why = tcnn_shader(m.field, m.conditions(FEATS, 0, EXPR, None))
        assert fn is None and "tinycudann is not installed" in why


def test_tcnn_parameter_layout():
    from nerfhead.models.layers import MLP

    mlp = MLP(20, 3, 32, 3)
    flat = tcnn_params(mlp)
    w0, w1, w2 = (m.weight.detach() for m in mlp if isinstance(m, torch.nn.Linear))
    assert flat.numel() == 32 * 32 + 32 * 32 + 16 * 32  # input 20 -> 32, output 3 -> 16 rows
    first = flat[:32 * 32].reshape(32, 32)
    assert torch.equal(first[:, :20], w0) and float(first[:, 20:].abs().sum()) == 0
    assert torch.equal(flat[1024:2048].reshape(32, 32), w1)
    last = flat[2048:].reshape(16, 32)
    assert torch.equal(last[:3], w2) and float(last[3:].abs().sum()) == 0
    assert mlp_unsupported(MLP(20, 3, 48, 3)).startswith("hidden widths [48]")
    assert mlp_unsupported(mlp) == ""


def test_render_frame_host_syncs(monkeypatch):
    """The new path makes at most one host sync per loop step (+ the fixed ones of a frame);
    the old one several per step."""
    from nerfhead.ops._loader import extension_available, extension_error

    if not extension_available():
        pytest.skip(extension_error())
    m = _model()
    _render(m, OLD)  # warm-up
    with HostSyncCounter() as old:
        _render(m, OLD)
    m.inference = InferenceConfig()
    stats: dict = {}
    import nerfhead.models.renderer as renderer

    real = renderer.render_rays_fixed

    def spy(*a, **k):
        out = real(*a, **k)
        stats.update(k["stats"])
        return out

    monkeypatch.setattr(renderer, "render_rays_fixed", spy)
    with HostSyncCounter() as new:
        _render(m, InferenceConfig())
    # render_frame itself reads has_torso once (bool of a buffer); the torso's visible
    # pixels are counted once (nonzero: InferenceConfig.torso_alpha_eps)
    assert new.total <= stats["steps"] + 2, new.by_op
    assert new.by_op["nonzero"] == 1, new.by_op
    assert old.total >= 3 * new.total, (old.by_op, new.by_op)


TOL_TORSO_SKIP = 1e-3  # = InferenceConfig.torso_alpha_eps: a hidden pixel's torso share is
#                        (1 - head alpha) * torso alpha * (torso - bg), at most eps


def test_torso_only_where_the_head_leaves_it_visible(monkeypatch):
    """The torso field runs only on pixels whose head alpha is below 1 - eps; the image is
    the one with the torso everywhere within eps, and the same on the visible pixels."""
    m = _model()
    assert m.torso is not None and bool(m.has_torso)
    rows: list[int] = []
    real = m.torso.forward

    def spy(coords, pose, latent):
        rows.append(coords.shape[0])
        return real(coords, pose, latent)

    monkeypatch.setattr(m.torso, "forward", spy)
    everywhere = _render(m, InferenceConfig(torso_alpha_eps=0.0))
    skipped = _render(m, InferenceConfig(torso_alpha_eps=TOL_TORSO_SKIP))
    R = m.camera.height * m.camera.width
    hidden = everywhere["head_alpha"] >= 1 - TOL_TORSO_SKIP
    assert 0.2 * R < int(hidden.sum()) < 0.9 * R  # the test model has both kinds of pixels
    assert rows == [R, R - int(hidden.sum())]
    assert torch.equal(skipped["head_alpha"], everywhere["head_alpha"])
    assert _maxdiff(skipped, everywhere, "rgb") <= TOL_TORSO_SKIP
    vis = ~hidden
    diff_visible = (skipped["rgb"][vis] - everywhere["rgb"][vis]).abs().max()
    assert float(diff_visible) <= 1e-6
    assert float((skipped["torso_alpha"][vis] - everywhere["torso_alpha"][vis]).abs().max()) <= 1e-6
    assert float(skipped["torso_alpha"][hidden].abs().max()) == 0.0
    # the bound is what the test checks, not a vacuous zero: the hidden pixels did move
    assert float((skipped["rgb"][hidden] - everywhere["rgb"][hidden]).abs().max()) > 0


def test_fixed_loop_buffers_are_reused_frame_to_frame():
    m = _model()
    m.inference = InferenceConfig()
    _render(m, m.inference, index=1)
    (buf,) = m._render_buffers.values()
    ptrs = [buf.positions.data_ptr(), buf.image.data_ptr(), buf.alive.data_ptr()]
    a = _render(m, m.inference, index=2)
    (buf2,) = m._render_buffers.values()
    assert buf2 is buf and [buf.positions.data_ptr(), buf.image.data_ptr(), buf.alive.data_ptr()] == ptrs
    b = _render(m, m.inference, index=2)
    assert torch.equal(a["rgb"], b["rgb"])  # outputs are copies, not views of the buffers


@pytest.mark.cuda
def test_cuda_float16_and_fixed_loop_match_float32():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = _model().cuda()
    old = _render(m, OLD)
    new = _render(m, InferenceConfig(cuda_graph=False))
    for key in ("rgb", "head_rgb", "head_alpha"):
        assert _maxdiff(old, new, key) <= TOL_FP16_CUDA, key
    f32 = _render(m, InferenceConfig(precision="float32", cuda_graph=False))
    for key in ("rgb", "head_rgb", "head_alpha"):
        assert _maxdiff(old, f32, key) <= 1e-4, key
    assert isinstance(m.conditions(FEATS, 0, EXPR, None), Conditions)


class _OpRecorder:
    """Names of the aten ops run inside the block (a TorchDispatchMode)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        names = self.names = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                names.append(func._schema.name.split("::")[-1])
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


@pytest.mark.parametrize("graph_steps", [4, 1])  # 1: most rays finish after the fixed steps
def test_frame_runner_static_inputs_and_same_image(graph_steps):
    """The CUDA-graph runner's path on the CPU (no capture there): inputs are copied into
    buffers allocated once (no tensor created per frame for pose or codes), and the frame
    is the one render_frame draws."""
    from nerfhead.models.frame_graph import FrameRunner

    m = _model()
    # torso everywhere in the reference too: the graph path does not skip hidden pixels
    m.inference = InferenceConfig(graph_steps=graph_steps, capacity=8192, torso_alpha_eps=0.0)
    ref = _render(m, m.inference)
    runner = FrameRunner(m, m.camera, with_torso=True, use_graph=True)  # CPU: eager
    assert not runner.use_graph
    cond = m.conditions(FEATS, 2, EXPR, 1)
    torso_latent = m.torso_latent(1)
    static = [runner.c2w, runner.c2w_host, runner.cond.audio, runner.cond.expression,
              runner.cond.latent, runner.torso_latent]
    ptrs = [t.data_ptr() for t in static]
    c2w64 = synthetic_pose().astype(np.float64)
    with _OpRecorder() as rec:
        runner.set_inputs(c2w64, cond, torso_latent)
    assert set(rec.names) == {"copy_"}, rec.names  # copies into the buffers, nothing else
    out = runner.render(c2w64, cond, torso_latent)
    out2 = runner.render(synthetic_pose(), cond, torso_latent)
    assert [t.data_ptr() for t in static] == ptrs
    R = m.camera.height * m.camera.width
    assert torch.equal(out["rgb"], out2["rgb"])
    assert float((out["rgb"] - ref["head_rgb"].reshape(R, 3)).abs().max()) <= TOL_LOOP
    assert float((out["alpha"] - ref["head_alpha"].reshape(R)).abs().max()) <= TOL_LOOP
    torso_alpha = out["torso_rgba"][:, 3]
    assert float((torso_alpha - ref["torso_alpha"].reshape(R)).abs().max()) <= 1e-6


def test_step_capacities_hand_values():
    from nerfhead.models.frame_graph import step_capacities

    # 1000 samples: 1000 * 1.15 + 64 = 1214, quantum 2048 // 8 = 256 -> 1280
    # 0 samples: one ray's 64; 900,000: 1,035,064 -> quantum 2^20 // 8 = 131,072 -> 1,048,576
    assert step_capacities([1000, 0, 900_000], 64, 1 << 21) == [1280, 64, 1 << 20]
    assert step_capacities([2_000_000], 64, 1 << 21) == [1 << 21]  # never past the buffers


def _runner_and_inputs(capacity=8192):
    from nerfhead.models.frame_graph import FrameRunner

    m = _model()
    m.inference = InferenceConfig(capacity=capacity, torso_alpha_eps=0.0)
    runner = FrameRunner(m, m.camera, with_torso=True, use_graph=True)  # CPU: no capture
    return m, runner, m.conditions(FEATS, 2, EXPR, 1), m.torso_latent(1)


def test_frame_runner_fixed_steps_shade_what_the_first_frame_measured():
    """The first frame renders exactly and records each step's samples; the next frames run
    fixed steps of those sizes (plus headroom), not the buffers' whole capacity, and draw
    the same image bit for bit."""
    _, runner, cond, lat = _runner_and_inputs()
    shaded = []
    first = runner.render(synthetic_pose(), cond, lat)
    caps = list(runner.capacities)
    buffers = runner.loop.buffers
    assert len(caps) >= 2 and sum(caps) < buffers.capacity * len(caps)
    assert caps[-1] == runner.loop.kmax  # the closing step finds nothing left
    import nerfhead.models.frame_graph as fg

    real = fg.head_shader

    def counting(*a, **k):
        fn = real(*a, **k)

        def shade(pos, dirs, ids):
            shaded.append(pos.shape[0])
            return fn(pos, dirs, ids)
        return shade

    fg.head_shader = counting
    try:
        second = runner.render(synthetic_pose(), cond, lat)
    finally:
        fg.head_shader = real
    assert shaded == caps  # one field call per fixed step, exactly its capacity, no finish
    for key in ("rgb", "alpha", "depth", "torso_rgba"):
        assert torch.equal(first[key], second[key]), key


def test_frame_runner_step_too_small_still_renders_right_and_grows():
    """A frame whose step asks for more than its capacity defers rays (they march in the
    next step or finish eagerly): the image is unchanged and the capacities grow."""
    m, runner, cond, lat = _runner_and_inputs()
    exact = runner.render(synthetic_pose(), cond, lat)
    kmax = runner.loop.kmax
    runner.capacities = [kmax] * len(runner.capacities)  # far too small
    small = runner.render(synthetic_pose(), cond, lat)
    R = m.camera.height * m.camera.width
    for key, tol in (("rgb", TOL_LOOP), ("alpha", TOL_LOOP), ("depth", TOL_FUSED_DEPTH)):
        assert float((exact[key] - small[key]).abs().max()) <= tol, key
    assert exact["rgb"].shape == (R, 3)
    assert runner.capacities[0] > kmax  # grown from what the steps asked for
    again = runner.render(synthetic_pose(), cond, lat)
    assert torch.equal(again["rgb"], small["rgb"]) or \
        float((again["rgb"] - exact["rgb"]).abs().max()) <= TOL_LOOP


@pytest.mark.cuda
def test_cuda_graph_frames_match_eager_frames(caplog):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import nerfhead.models.frame_graph as fg

    fg._said.clear()
    m = _model().cuda()
    # torso on every pixel eagerly too: inside the graph it runs everywhere
    eager = [_render(m, InferenceConfig(cuda_graph=False, torso_alpha_eps=0.0), index=i)
             for i in (1, 2, 3)]
    with caplog.at_level(logging.INFO, logger="nerfhead.render"):
        graphed = [_render(m, InferenceConfig(graph_steps=2), index=i) for i in (1, 2, 3)]
    assert "CUDA graph: captured" in caplog.text, caplog.text
    (runner,) = m._frame_runners.values()
    assert runner.graph is not None  # captured once, replayed for frames 2 and 3
    for e, g in zip(eager, graphed):
        for key in ("rgb", "head_alpha", "torso_alpha"):
            assert _maxdiff(e, g, key) <= 1e-3, key
    assert _maxdiff(graphed[0], graphed[1], "rgb") > 0  # the audio code changes the frame


def test_bench_render_compare_old_and_new(tmp_path, capsys):
    import json

    from nerfhead.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "render", "--synthetic", "--resolution", "16", "--frames", "1",
                 "--device", "cpu", "--compare", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "old vs new" in table and "host syncs per frame" in table and "old/new" in table
    res = json.loads(out.read_text())
    comp = res["compare"]
    assert set(comp["speedup"]) == {"fps_head", "fps_head_torso_compositing"}
    assert comp["new"]["host_syncs"] < comp["old"]["host_syncs"]
    assert res["fps_head"] == comp["new"]["fps_head"] > 0  # top level: the new path
    assert "loop='compact'" in comp["old"]["inference"] and "loop='fixed'" in comp["new"]["inference"]
    assert "eager" not in comp  # the graph-less variant is timed on CUDA only
    # on CUDA the table gets a column of the new path without its graph
    from nerfhead.render.bench import format_compare

    eager = {**comp["new"], "fps_head": 123.45, "host_syncs": 9}
    text = format_compare({**comp, "eager": eager})
    assert "eager" in text and "123.45" in text and "without its CUDA graph" in text


@pytest.mark.cuda
def test_cuda_render_ahead_and_torso_skip():
    """On CUDA: frames rendered ahead in a thread, converted to uint8 on the device and copied
    through pinned memory, are the frames of the synchronous conversion; the torso skip
    holds its tolerance there too."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from nerfhead.render.ahead import HostFrame, render_ahead, to_uint8_device
    from nerfhead.render.renderer import to_uint8

    m = _model().cuda()
    m.inference = InferenceConfig(cuda_graph=False)
    every = _render(m, InferenceConfig(cuda_graph=False, torso_alpha_eps=0.0))
    skip = _render(m, InferenceConfig(cuda_graph=False, torso_alpha_eps=TOL_TORSO_SKIP))
    assert _maxdiff(skip, every, "rgb") <= TOL_TORSO_SKIP

    m.inference = InferenceConfig()  # the graph path, as `nerfhead render` runs it
    for i in (0, 1):  # first frame eager, second captures: every frame below is a replay
        m.render_frame(synthetic_pose(), FEATS, i, EXPR, latent_index=1)
    inline = [to_uint8(m.render_frame(synthetic_pose(), FEATS, i, EXPR, latent_index=1)["rgb"])
              for i in range(4)]

    def produce():
        for i in range(4):
            yield i, HostFrame(to_uint8_device(
                m.render_frame(synthetic_pose(), FEATS, i, EXPR, latent_index=1)["rgb"]))

    ahead = [h.numpy().copy() for _, h in render_ahead(produce, depth=2)]
    assert all(np.array_equal(a, b) for a, b in zip(ahead, inline))
