"""The course's code, one module per idea (see the README's table); the notebooks import it as ``utils``.

Importing any part of the package makes the process offline, whatever the environment: the course runs
on its own data and models, and ``python -m utils.pipeline`` run outside ``make`` (which exports these
variables too) must not reach the Hugging Face hub. Without them, one pipeline run made four requests:
TRL's trainers send a telemetry ping when they start, and the hub client fetches its agent registry to
build that request's user agent.

The variables are set with ``os.environ.setdefault`` here, before anything in the package imports
``huggingface_hub`` (which reads them once, at import), so a value the user set explicitly wins. If the
hub client was imported before this package, its switches are already read: they are then set on
``huggingface_hub.constants`` (and ``datasets.config``) directly, the same values and only where we
defaulted the variable.

Opting back in, for the optional hub profile: ``RLHF_ALLOW_HUB=1`` in the environment skips all of this
(then ``HF_HUB_OFFLINE`` and friends are whatever the environment says).
"""

from __future__ import annotations

import os
import sys

# Each of these alone stops a kind of request; together they are what the course needs.
OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub and transformers: no downloads, no agent-registry fetch, no telemetry
    "HF_DATASETS_OFFLINE": "1",  # datasets: no hub lookups when a dataset is built or loaded
    "HF_HUB_DISABLE_TELEMETRY": "1",  # TRL's ping when a trainer starts, should HF_HUB_OFFLINE be 0
}


def hub_allowed() -> bool:
    """True when ``RLHF_ALLOW_HUB`` is set to 1/true/yes: the package then leaves the hub switches alone."""
    return os.environ.get("RLHF_ALLOW_HUB", "").strip().lower() in ("1", "true", "yes")


def _go_offline() -> None:
    defaulted = [name for name in OFFLINE_DEFAULTS if name not in os.environ]  # a user's own value wins
    for name in defaulted:
        os.environ.setdefault(name, OFFLINE_DEFAULTS[name])
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported before us: it read the environment without our defaults
        if "HF_HUB_OFFLINE" in defaulted:
            constants.HF_HUB_OFFLINE = True
        if "HF_HUB_DISABLE_TELEMETRY" in defaulted:
            constants.HF_HUB_DISABLE_TELEMETRY = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None and "HF_DATASETS_OFFLINE" in defaulted:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


if not hub_allowed():
    _go_offline()
