"""``nerfhead bench train``: iterations per second and the phases of a step, on a tiny
synthetic dataset and on a run folder."""

from __future__ import annotations

import json

import pytest
import torch

from nerfhead.train.bench import PHASES, PhaseTimer, build_trainer, run_train_bench

torch.set_num_threads(1)
FAST = ["data.image_size=0", "data.num_rays=128", "model.max_steps=16", "train.grid_update_every=2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from nerfhead.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("bt") / "data", num_frames=12, size=32)


def test_phases_add_up_and_each_is_seen(dataset, tmp_path):
    trainer, label = build_trainer(str(dataset), "tiny", FAST, "cpu", tmp_path / "run")
    assert "fresh weights" in label and trainer.stage == "head"
    r = run_train_bench(trainer, steps=4, warmup=1)
    ms = r["ms_per_phase"]
    assert set(ms) == set(PHASES)
    for phase in ("data", "grid update", "forward", "backward", "optimizer"):
        assert ms[phase] > 0, phase
    # the timed phases are a partition of the timed pass (other = the rest, never negative)
    assert sum(ms.values()) == pytest.approx(r["ms_per_step_timed"], rel=1e-6)
    assert r["iters_per_s"] == pytest.approx(1000.0 / r["ms_per_step"])
    assert trainer.step == 1 + 4 + 4
    assert not (tmp_path / "run" / "checkpoints").exists()  # a benchmark saves nothing


def test_timing_wrappers_do_not_change_training(dataset, tmp_path):
    """The instrumented steps are the trainer's own: same losses as without the wrappers."""
    losses = []
    for timed in (False, True):
        trainer, _ = build_trainer(str(dataset), "tiny", FAST, "cpu", tmp_path / f"r{timed}")
        if timed:
            PhaseTimer(trainer.device).instrument(trainer)
        losses.append([trainer.train_step(s)["loss"] for s in range(3)])
    assert losses[0] == losses[1]


def test_bench_train_command_on_a_run_folder(dataset, tmp_path, capsys):
    from nerfhead.cli import main

    run = tmp_path / "run"
    assert main(["train", str(dataset), "--config", "tiny", "--out", str(run), "--iters", "2",
                 "--device", "cpu", "--no-progress", "--threads", "1",
                 *[a for o in FAST for a in ("--set", o)]]) == 0
    before = sorted(p.name for p in run.rglob("*"))
    out = tmp_path / "bt.json"
    prof = tmp_path / "prof.txt"
    assert main(["bench", "train", str(run), "--device", "cpu", "--steps", "2", "--warmup", "1",
                 "--threads", "1", "--json", str(out), "--profile", str(prof)]) == 0
    table = capsys.readouterr().out
    assert "iterations per second" in table and "backward" in table and "step 2" in table
    res = json.loads(out.read_text())
    assert res["stage"] == "head" and res["iters_per_s"] > 0 and res["torch_threads"] == 1
    assert "Optimizer.step" in prof.read_text() or "aten::" in prof.read_text()
    assert sorted(p.name for p in run.rglob("*")) == before  # the run folder is untouched
    assert main(["bench", "train", str(tmp_path / "nothing"), "--device", "cpu"]) == 2
    assert "nothing" in capsys.readouterr().err
