"""The CPU thread choice of render / evaluate / train (nerfhead.threads), with hand-set core
counts and load averages."""

import argparse
import logging

import pytest
import torch

from nerfhead import threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    threads.declare_cores(0)
    yield
    threads.declare_cores(0)
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, load1, expected", [
    (2, 0.0, 2),    # idle 2-core machine: both cores
    (2, 0.4, 2),    # a bit of background noise rounds to no busy process
    (2, 0.6, 1),    # one process most of the minute: one core left
    (2, 2.1, 1),    # two training jobs on 2 cores: none free, still 1 (never 0)
    (2, 11.0, 1),   # heavily oversubscribed
    (16, 3.2, 13),  # big machine, three busy processes
    (16, 0.0, 16),
    (1, 0.0, 1),
])
def test_threads_follow_the_free_cores(cores, load1, expected):
    choice = threads.choose_threads(cores=cores, load1=load1, environ={})
    assert choice.threads == expected
    assert f"{cores} usable cores" in choice.reason and f"{load1:.1f}" in choice.reason


def test_omp_num_threads_and_declared_cores_win_over_the_load():
    assert threads.choose_threads(2, 0.0, {"OMP_NUM_THREADS": "1"}).threads == 1
    assert "OMP_NUM_THREADS=1" in threads.choose_threads(2, 0.0, {"OMP_NUM_THREADS": "1"}).reason
    assert threads.choose_threads(2, 0.0, {"OMP_NUM_THREADS": "junk"}).threads == 2
    threads.declare_cores(3)
    assert threads.choose_threads(16, 0.0, {"OMP_NUM_THREADS": "1"}).threads == 3
    threads.declare_cores(0)
    assert threads.choose_threads(16, 0.0, {}).threads == 16


def test_machine_values_come_from_affinity_and_loadavg(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.7, 1.0, 1.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.usable_cores() == 4
    assert threads.choose_threads().threads == 1  # 4 cores - 3 busy


def test_set_torch_threads_applies_and_logs_once_per_call(monkeypatch, caplog):
    monkeypatch.setattr(threads, "choose_threads", lambda: threads.ThreadChoice(1, "hand-set"))
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="nerfhead"):
        assert threads.set_torch_threads(None, "cpu", "nerfhead render") == 1
    assert torch.get_num_threads() == 1
    assert [r.getMessage() for r in caplog.records] == ["nerfhead render: 1 torch CPU thread (hand-set)"]
    assert threads.set_torch_threads(2, "cpu") == 2  # an explicit --threads wins
    torch.set_num_threads(1)
    assert threads.set_torch_threads(0, "cpu") == 1  # 0: torch's setting left alone
    assert threads.set_torch_threads(None, "cuda:0") == 1  # CUDA: CPU threads not touched


def test_render_evaluate_train_parse_threads_default_none():
    """No --threads on the command line reaches set_torch_threads as None (choose)."""
    from nerfhead.eval.cli import add_arguments as eval_args
    from nerfhead.render.cli import add_arguments as render_args
    from nerfhead.train.cli import add_arguments as train_args

    for add, argv in [(render_args, ["RUN", "--audio", "a.wav"]), (eval_args, ["RUN"]),
                      (train_args, ["DATA", "--out", "RUN"])]:
        p = argparse.ArgumentParser()
        add(p)
        assert p.parse_args(argv).threads is None
        assert p.parse_args(argv + ["--threads", "3"]).threads == 3
