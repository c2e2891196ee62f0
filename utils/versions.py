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


def print_versions() -> None:
    for name, version in versions().items():
        print(f"{name:>14}: {version}")


def in_colab() -> bool:
    return "google.colab" in sys.modules
