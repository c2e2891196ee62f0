"""The package is offline on its default path whatever the environment (utils/__init__.py).

Each test runs a fresh Python with every Hugging Face switch UNSET, as a user's shell would have it, under
an audit hook that records each DNS lookup (``socket.getaddrinfo``) and each connection
(``socket.connect``) to a host that is not the loopback. The child imports the package, trains a tiny
tokenizer and GPT-2, and runs one step of TRL's SFTTrainer and one of its RewardTrainer (the trainers'
start is where the telemetry ping and the agent-registry fetch came from). A request that fails (no
network here) is still seen: the hook fires before the lookup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What could switch the hub client on or off, or change what it is told: none of it may reach the child.
CLEARED = (
    "TRANSFORMERS_OFFLINE",
    "DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "RLHF_ALLOW_HUB",
    "CI",
)  # TRL skips its ping on CI machines: clear it, or the check would pass there for the wrong reason

CHILD = r"""
import ipaddress, json, sys, tempfile, threading

events = []


def is_loopback(host) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in ("localhost", "ip6-localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: a lookup is a request


def audit(event, args):
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect" and isinstance(args[1], tuple):  # (host, port, ...): AF_INET / AF_INET6
        host = args[1][0]
    else:
        return
    if host is not None and not is_loopback(host):
        events.append(f"{event} {host}")


sys.addaudithook(audit)

if sys.argv[1] == "hub-first":  # a user script that imports the libraries before the course's package
    import huggingface_hub, transformers, datasets  # noqa: F401

import torch
import utils  # noqa: F401
from utils import review_world as rw
from utils import reward_model as rm
from utils import sft
from utils.language_model import LMConfig, build_model
from utils.tokenizer import train_bpe

torch.set_num_threads(1)
rows = rw.instruction_pairs(16, seed=3)
tokenizer = train_bpe([r["text"] for r in rw.lm_corpus(200, seed=4)] + [r["prompt"] + r["completion"] for r in rows],
                      vocab_size=300)
lm = build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=256), tokenizer, seed=0)
with tempfile.TemporaryDirectory() as folder:
    config = sft.SFTConfig(epochs=1.0, batch_size=16, lr=3e-3)
    sft.build_sft_trainer(lm, tokenizer, rows, config, folder).train()
model = rm.build_gpt_reward_model(lm, tokenizer.pad_token_id)
with tempfile.TemporaryDirectory() as folder:
    config = rm.RewardModelConfig(steps=1, batch_size=8, warmup_steps=0)
    rm.build_trl_reward_trainer(model, tokenizer, rw.preference_pairs(8, seed=5), config, folder).train()

# The hub client sends from a background thread: wait (at most 60 s) until it has sent what was queued.
try:
    from huggingface_hub.utils._telemetry import _TELEMETRY_QUEUE as queue
except ImportError:  # renamed in a later huggingface_hub: give its thread time instead
    queue = None
waiter = threading.Thread(target=queue.join if queue else lambda: __import__("time").sleep(5), daemon=True)
waiter.start()
waiter.join(timeout=60)
print("EVENTS " + json.dumps(events))
"""


def run_child(mode: str, **extra_env: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k not in CLEARED}
    env.update(extra_env)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("EVENTS ")]
    return json.loads(line[len("EVENTS ") :])


@pytest.mark.parametrize("mode", ["utils-first", "hub-first"])
def test_the_default_path_makes_no_network_request(mode):
    assert run_child(mode) == []


def test_the_hook_sees_the_hub_once_the_package_allows_it():
    """The control: opted back in (RLHF_ALLOW_HUB=1), the same run reaches for the hub, and the hook sees it.

    The endpoint is a name that cannot resolve (the reserved .invalid domain), so nothing leaves the machine
    but a failing DNS lookup; without this control, a hook that saw nothing would pass the test above too.
    """
    events = run_child("utils-first", RLHF_ALLOW_HUB="1", HF_ENDPOINT="https://hub.invalid")
    assert events and all(event.endswith("hub.invalid") for event in events), events
