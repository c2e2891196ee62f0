"""Which profile a stage runs for: the one it is given, else the one the environment names.

Every loader of the stage layer takes ``profile=None`` so that a notebook can call ``load_base_lm()`` bare;
this is the one place that turns that ``None`` into a profile (``utils.profiles.get_profile`` reads
``$RLHF_PROFILE`` and anything else that selects a run).
"""

from __future__ import annotations

from utils.profiles import Profile, get_profile


def resolve_profile(profile: Profile | None) -> Profile:
    """``profile`` itself, or the profile the environment selects when it is None."""
    return profile if profile is not None else get_profile()
