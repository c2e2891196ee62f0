"""Every notebook's exercises check themselves: each student notebook has starter cells calling
``check("NN.K", ...)``, its solutions notebook asserts the same checks pass, every id has a registered check,
and every notebook asks at least one "predict, then run" question."""

import json
import re
from pathlib import Path

import pytest

from utils.exercises import _check_for

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHAPTERS = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
CHECK_CALL = re.compile(r"""check\(\s*["'](\d{2}\.\d+[a-z]?)["']""")


def cells(path: Path, kind: str) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def test_every_chapter_is_found():
    assert len(CHAPTERS) >= 12


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem[:2])
def test_starter_cells_and_solutions_agree(chapter):
    number = chapter.stem[:2]
    solutions = NOTEBOOKS / "solutions" / f"{chapter.stem}_solutions.ipynb"
    started = {i for source in cells(chapter, "code") for i in CHECK_CALL.findall(source)}
    asserted = {  # the ids checked on a line that asserts: `assert check("02.5a", f) and check("02.5b", g)`
        i
        for source in cells(solutions, "code")
        for line in source.splitlines()
        if line.lstrip().startswith("assert ")
        for i in CHECK_CALL.findall(line)
    }
    assert started, f"{chapter.name} has no exercise starter cell calling check('{number}.K', ...)"
    assert all(i.startswith(number + ".") for i in started | asserted), (started, asserted)
    assert started == asserted, f"starter cells {sorted(started - asserted)} lack an asserted solution; " + (
        f"solutions assert {sorted(asserted - started)} that no starter cell offers"
    )
    for exercise_id in sorted(started):
        _check_for(exercise_id)  # raises KeyError if no check is registered


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem[:2])
def test_a_predict_then_run_question(chapter):
    assert any(re.search(r"\bpredict\b", text, re.IGNORECASE) for text in cells(chapter, "markdown")), (
        f"{chapter.name} asks no 'predict, then run' question"
    )
