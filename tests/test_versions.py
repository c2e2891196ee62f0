"""The notebooks' versions line: one line, every package named, the hardware last."""

import torch
import transformers

from utils.versions import PACKAGES, versions_line


def test_versions_line_is_one_line_with_every_package():
    line = versions_line()
    assert "\n" not in line
    assert f"torch {torch.__version__}" in line and f"transformers {transformers.__version__}" in line
    assert all(f"{name} " in line for name in PACKAGES)
    assert line.endswith("threads") and str(torch.get_num_threads()) in line.split("·")[-1]
