"""Two processes must make the same PPO update as one process with the same global batch.

The worker (tests/ppo_multiprocess_worker.py) trains two tiny configurations; we run it once in this
process and with 2 CPU processes (gloo) under each launcher, ``torch.distributed.run`` (torchrun) and
``accelerate launch``, then compare every parameter.
Skipped, with the reason, where processes cannot be launched or cannot talk to each other: the loopback
is probed first (a network namespace without one made the launchers retry for minutes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ppo_multiprocess_worker.py"
TIME_STATS = ("eps", "tokens_per_second", "time/")
# What a launcher prints when its processes cannot reach each other (errno 97 EAFNOSUPPORT, 99 EADDRNOTAVAIL,
# 101 ENETUNREACH), should the loopback fail in a way the probe below did not catch.
CANNOT_CONNECT = (
    "Address family not supported",
    "Permission denied",
    "Cannot assign requested address",
    "Network is unreachable",
    "errno: 97",
    "errno: 99",
    "errno: 101",
)


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # accelerate's torchrun-based launcher is behind --multi_gpu; without CUDA its processes run on the CPU
    # (gloo). Its --cpu flag would instead start ONE process unless MPI is set up.
    "accelerate": [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
}


def loopback_problem(timeout: float = 2.0) -> str | None:
    """Why two processes on this machine cannot talk over TCP on 127.0.0.1, or None when they can.

    What the launchers' rendezvous and gloo need: listen on the loopback, connect to it, accept. Without a
    working loopback (e.g. ``unshare -n``: the interface exists but is down) bind succeeds and connect
    fails with ENETUNREACH.
    """
    try:
        with socket.create_server(("127.0.0.1", 0)) as server:
            server.settimeout(timeout)
            with socket.create_connection(server.getsockname(), timeout=timeout):
                server.accept()[0].close()
    except OSError as err:
        return f"the loopback 127.0.0.1 is unusable ({err})"
    return None


@pytest.fixture(scope="module", autouse=True)
def processes_can_talk():
    """Skip the whole module at once (before the one-process run) when two processes could not talk."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build of PyTorch")
    if problem := loopback_problem():
        pytest.skip(f"processes cannot connect on this machine: {problem}")


def launch_two_processes(out_path: Path, launcher: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, *LAUNCHERS[launcher], str(WORKER), str(out_path)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def two_process_results(request, tmp_path_factory):
    out_path = tmp_path_factory.mktemp("ppo_mp") / "two.pt"
    try:
        result = launch_two_processes(out_path, request.param)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"could not launch 2 processes: {err}")
    if result.returncode != 0:
        if any(s in result.stderr for s in CANNOT_CONNECT):
            pytest.skip(f"processes cannot connect on this machine: {result.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"the 2-process run ({request.param}) failed:\n{result.stderr[-4000:]}")
    results = torch.load(out_path, weights_only=False)
    assert all(r["world_size"] == 2 for r in results.values()), "the launcher did not start 2 processes"
    return results


@pytest.fixture(scope="module")
def one_process_results():
    sys.path.insert(0, str(WORKER.parent))
    try:
        import ppo_multiprocess_worker as worker
    finally:
        sys.path.remove(str(WORKER.parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: worker.run(name) for name in worker.CONFIGS}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["head", "model"])
def test_two_processes_make_the_same_updates_as_one(name, one_process_results, two_process_results):
    one, two = one_process_results[name], two_process_results[name]
    assert one["state"].keys() == two["state"].keys()
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, rtol=1e-4, atol=1e-5, msg=f"parameter {key}")
    # The update moved the parameters (otherwise the comparison above proves nothing) ...
    assert one["log"][-1]["update"] == 2 and abs(one["log"][-1]["loss/policy_avg"]) > 0
    # ... and every logged statistic is the global one.
    for row_one, row_two in zip(one["log"], two["log"]):
        for key, value in row_one.items():
            if key.startswith(TIME_STATS):
                continue
            # A clip fraction counts tokens on either side of a threshold: float rounding (sums in another
            # order) may move one token across it, so allow one token in a hundred.
            tolerance = dict(abs=1e-2) if "clipfrac" in key else dict(rel=1e-4, abs=1e-5)
            assert row_two[key] == pytest.approx(value, **tolerance), key
