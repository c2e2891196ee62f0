"""What a notebook's first cells print: the versions a result was produced with."""

from __future__ import annotations

import importlib
import platform
import sys

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "tokenizers",
    "datasets",
    "accelerate",
    "ipywidgets",
    "matplotlib",
    "numpy",
)


def versions() -> dict[str, str]:
    """Python, the course's main packages, and the hardware PyTorch sees."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(terse=True)}
    for name in PACKAGES:
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            out[name] = "not installed"
    import torch

    out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out["torch threads"] = str(torch.get_num_threads())
    return out


def versions_line() -> str:
    """The versions on one line: "python 3.11.9 · torch 2.13.0 · ... · cpu, 2 threads"."""
    found = versions()
    hardware = f"{found.pop('device')}, {found.pop('torch threads')} threads"
    found.pop("platform")
    return " · ".join([*(f"{name} {version}" for name, version in found.items()), hardware])


def print_versions() -> None:
    """One line of versions (the details a bug report needs are in :func:`versions`)."""
    print(versions_line())


def in_colab() -> bool:
    return "google.colab" in sys.modules
