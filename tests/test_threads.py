"""The thread default (one thread per idle core) and the benchmark behind it (utils.thread_bench)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from utils import seed as seed_module
from utils.seed import configure_threads, cpu_busy_cores, threads_for_load
from utils.thread_bench import WORKLOADS, ThreadBenchConfig, format_table, make_workload, time_workload


@pytest.mark.parametrize(
    ("available", "busy", "expected"),
    [
        (2, 0.0, 2),  # idle: every core
        (2, 0.4, 2),  # a browser tab's worth of load still leaves a core and a half
        (2, 0.6, 1),  # more than half a core taken: one thread
        (2, 1.0, 1),  # one core spinning elsewhere
        (2, 2.0, 1),  # both busy: still one thread, never zero
        (4, 1.2, 3),
        (8, 0.0, 8),
        (2, None, 2),  # no /proc/stat (macOS, Windows): every core, as torch would
    ],
)
def test_threads_for_load(available, busy, expected):
    assert threads_for_load(available, busy) == expected


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="cpu_busy_cores reads /proc/stat (Linux only)")
def test_cpu_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = cpu_busy_cores(interval=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.6, busy  # the spinner holds a whole core


def test_configure_threads_uses_the_idle_cores(monkeypatch, restore_threads):
    monkeypatch.delenv("RLHF_NUM_THREADS", raising=False)
    monkeypatch.setattr(seed_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(seed_module, "cpu_busy_cores", lambda interval=0.25: 1.0)
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(seed_module, "cpu_busy_cores", lambda interval=0.25: 0.1)
    assert configure_threads() == 2 and torch.get_num_threads() == 2


def test_configure_threads_obeys_the_variable_and_the_argument(monkeypatch, restore_threads):
    monkeypatch.setattr(seed_module, "cpu_busy_cores", lambda interval=0.25: 5.0)  # ignored when told
    monkeypatch.setenv("RLHF_NUM_THREADS", "2")
    assert configure_threads() == 2 and torch.get_num_threads() == 2
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_workload_runs_and_times(name, restore_threads):
    run = make_workload(name, ThreadBenchConfig(repeats=1, steps=1))
    torch.set_num_threads(2)
    seconds = time_workload(run, threads=1, loaded=False, repeats=1)
    assert seconds > 0
    assert torch.get_num_threads() == 2  # the benchmark leaves the thread count as it found it


def test_unknown_workload_is_named():
    with pytest.raises(ValueError, match="'attention'.*lm_train"):
        make_workload("attention", ThreadBenchConfig())


def test_format_table_ratios():
    result = {"seconds": {"lm_train": {"1t_idle": 2.0, "2t_idle": 1.0, "1t_loaded": 2.0, "2t_loaded": 6.0}}}
    row = format_table(result).splitlines()[-1]
    assert "2.00x faster" in row and "3.0x slower" in row
