"""The preference labeller: rows written, position randomisation, resuming, errors, and the widget's buttons."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from utils.labelling import PreferenceLabeller, item_id, labelling_widget, load_preference_labels
from utils.preference_data import validate_preference_rows

FIXED_TIME = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def make_pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"Review {i}:", "completion_a": f" good {i}", "completion_b": f" bad {i}"} for i in range(n)]


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def make_labeller(pairs, path, annotator="alice", seed=0):
    return PreferenceLabeller(pairs, path, annotator, seed=seed, clock=lambda: FIXED_TIME)


def test_answers_become_trl_rows(tmp_path):
    path = tmp_path / "labels.jsonl"
    pairs = make_pairs(4)
    labeller = make_labeller(pairs, path)
    shown = []
    for choice in ["A", "B", "tie", "skip"]:
        shown.append(labeller.current)
        labeller.answer(choice)
    assert labeller.done and labeller.current is None

    rows = read_lines(path)
    assert len(rows) == 3  # the skip wrote nothing
    for row, item, choice in zip(rows, shown, ["A", "B", "tie"]):
        preferred, other = (item.option_a, item.option_b) if choice != "B" else (item.option_b, item.option_a)
        assert (row["prompt"], row["chosen"], row["rejected"]) == (item.prompt, preferred, other)
        assert row["tie"] is (choice == "tie") and row["choice"] == choice
        assert row["annotator_id"] == "alice" and row["timestamp"] == "2025-01-02T03:04:05+00:00"
        assert row["item_id"] == item.item_id and row["swapped"] == item.swapped
        # swapped records the display order: option A is completion_b exactly when swapped
        pair = next(p for p in pairs if item_id(p) == item.item_id)
        assert item.option_a == (pair["completion_b"] if item.swapped else pair["completion_a"])
    assert labeller.progress() == "3 / 4 labelled (1 skipped this session)"

    # The rows a trainer gets are the non-tie ones, and they are valid TRL preference rows.
    trainable = load_preference_labels(path)
    assert [r["choice"] for r in trainable] == ["A", "B"]
    assert validate_preference_rows(trainable) == []
    assert len(load_preference_labels(path, include_ties=True)) == 3


def test_each_answer_is_on_disk_immediately(tmp_path):
    path = tmp_path / "labels.jsonl"
    labeller = make_labeller(make_pairs(3), path)
    for expected_lines in (1, 2):
        labeller.answer("A")
        assert len(read_lines(path)) == expected_lines  # readable before the session ends


def test_display_order_is_seeded_and_balanced(tmp_path):
    pairs = make_pairs(200)

    def swaps(seed):
        labeller = make_labeller(pairs, tmp_path / f"s{seed}.jsonl", seed=seed)
        result = []
        while not labeller.done:
            result.append(labeller.current.swapped)
            labeller.answer("skip")
        return result

    first = swaps(0)
    assert first == swaps(0)  # same seed, same display order
    assert first != swaps(1)
    assert 70 < sum(first) < 130  # about half of the items are shown swapped (binomial(200, 0.5): mean 100, sd 7)


def test_restart_resumes_where_the_annotator_stopped(tmp_path):
    path = tmp_path / "labels.jsonl"
    pairs = make_pairs(5)
    first_session = make_labeller(pairs, path)
    first_items = []
    for choice in ["A", "skip", "tie"]:
        first_items.append(first_session.current)
        first_session.answer(choice)
    # "Crash": the object is gone, the file stays. A new session serves the skipped item and the unseen two,
    # each displayed as before.
    second_session = make_labeller(pairs, path)
    assert second_session.progress() == "2 / 5 labelled"
    assert second_session.current == first_items[1]
    served = []
    while not second_session.done:
        served.append(second_session.current.item_id)
        second_session.answer("B")
    assert served == [item_id(p) for p in pairs[1:2] + pairs[3:]]
    assert second_session.progress() == "5 / 5 labelled"
    assert len(read_lines(path)) == 5
    # Another annotator sharing the file starts from scratch.
    assert make_labeller(pairs, path, annotator="bob").progress() == "0 / 5 labelled"


def test_bad_input_is_rejected(tmp_path):
    path = tmp_path / "labels.jsonl"
    labeller = make_labeller(make_pairs(1), path)
    with pytest.raises(ValueError, match=r"choice must be one of \('A', 'B', 'tie', 'skip'\), got 'a'"):
        labeller.answer("a")
    labeller.answer("A")
    with pytest.raises(RuntimeError, match="no item left"):
        labeller.answer("A")
    with pytest.raises(ValueError, match="annotator_id"):
        PreferenceLabeller(make_pairs(1), path, " ")
    with pytest.raises(ValueError, match=r"pairs\[0\]: field 'completion_b'"):
        PreferenceLabeller([{"prompt": "p", "completion_a": "a"}], path, "alice")
    with pytest.raises(ValueError, match=r"pairs\[0\]: 'completion_a' and 'completion_b' are identical"):
        PreferenceLabeller([{"prompt": "p", "completion_a": "a", "completion_b": "a"}], path, "alice")
    with pytest.raises(ValueError, match=r"pairs\[2\] repeats pairs\[0\]"):
        PreferenceLabeller(make_pairs(2) + make_pairs(1), path, "alice")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"item_id": "x", "annotator_id": "alice"}\n{"item_id": \n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        PreferenceLabeller(make_pairs(1), corrupt, "alice")


def _buttons(box):
    """The widget's buttons by description (the last HBox of the VBox holds them)."""
    return {button.description: button for button in box.children[-1].children}


def _parts(box):
    """(progress, prompt, the two option columns, notice) of the widget."""
    progress, prompt, options, notice = box.children[:4]
    return progress, prompt, options.children, notice


def _shown_option(column) -> str:
    """The text an option column shows (its second child; the first is its title)."""
    return column.children[1].value


def html_contains(html_value: str, text: str) -> bool:
    import html

    return html.escape(text) in html_value


def test_widget_clicks_drive_the_labeller(tmp_path):
    pytest.importorskip("ipywidgets")
    path = tmp_path / "labels.jsonl"
    pairs = [{"prompt": "Is <this> good?", "completion_a": " yes & more", "completion_b": " no"}] + make_pairs(2)
    labeller = make_labeller(pairs, path)
    box = labelling_widget(labeller)
    progress, prompt, columns, _ = _parts(box)
    buttons = _buttons(box)
    assert set(buttons) == {"A is better", "B is better", "Tie", "Skip"}
    assert progress.value == "0 / 3 labelled"
    assert "Is &lt;this&gt; good?" in prompt.value  # text is escaped, not rendered as HTML
    first = labeller.current
    assert html_contains(_shown_option(columns[0]), first.option_a)
    assert html_contains(_shown_option(columns[1]), first.option_b)

    buttons["B is better"].click()
    buttons["Skip"].click()
    buttons["Tie"].click()
    rows = read_lines(path)
    assert [(r["choice"], r["tie"]) for r in rows] == [("B", False), ("tie", True)]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == (first.option_b, first.option_a)
    assert progress.value == "2 / 3 labelled (1 skipped this session)"
    assert all(button.disabled for button in buttons.values()) and "All done" in prompt.value
    buttons["A is better"].click()  # a stray click when done changes nothing
    assert len(read_lines(path)) == 2


def test_widget_shows_the_options_as_two_boxed_columns(tmp_path):
    widgets = pytest.importorskip("ipywidgets")
    labeller = make_labeller([{"prompt": "p", "completion_a": " ok.", "completion_b": " bad."}], tmp_path / "l.jsonl")
    _, _, columns, _ = _parts(labelling_widget(labeller))
    item = labeller.current
    assert len(columns) == 2
    for column, title, text in zip(columns, ("A", "B"), (item.option_a, item.option_b)):
        assert isinstance(column, widgets.VBox)
        assert column.children[0].value == f"<b>{title}</b>" and html_contains(_shown_option(column), text)
        layout = column.layout
        # a border on every side, and equal widths however short the texts are
        assert all(
            getattr(layout, f"border_{side}", layout.border) == "1px solid #9e9e9e"
            for side in ("top", "right", "bottom", "left")
        )
        assert (layout.width, layout.flex) == ("50%", "1 1 0%") and layout.padding
        # only layout properties that ipywidgets 7.7 (Colab) has as well
        set_traits = {name for name in layout.keys if not name.startswith("_") and getattr(layout, name) is not None}
        assert set_traits <= {
            "border",
            "border_top",
            "border_right",
            "border_bottom",
            "border_left",
            "padding",
            "width",
            "flex",
        }, set_traits


def test_a_simulated_annotator_leaves_the_student_a_fresh_queue(tmp_path):
    """Notebook 07 runs the widget, then a simulated annotator on the same pairs (Run All does both at once).

    The simulated annotator labels through a labeller of its own, so the student's first click still labels
    item 1 of the pairs, as the student's widget shows it.
    """
    pytest.importorskip("ipywidgets")
    pairs = make_pairs(8)
    student = make_labeller(pairs, tmp_path / "you.jsonl", annotator="you")
    box = labelling_widget(student)
    simulated = make_labeller(pairs, tmp_path / "simulated.jsonl", annotator="simulated")
    while not simulated.done:
        simulated.answer("A" if simulated.current.option_a.startswith(" good") else "B")
    assert len(read_lines(tmp_path / "simulated.jsonl")) == 8

    progress, prompt, columns, notice = _parts(box)
    assert progress.value == "0 / 8 labelled" and "All done" not in prompt.value
    shown = student.current
    assert shown.item_id == item_id(pairs[0])
    _buttons(box)["A is better"].click()
    [row] = read_lines(tmp_path / "you.jsonl")
    assert (row["item_id"], row["annotator_id"], row["chosen"]) == (shown.item_id, "you", shown.option_a)
    assert progress.value == "1 / 8 labelled" and notice.value == ""
    assert html_contains(_shown_option(columns[0]), student.current.option_a)  # item 2 on screen


def test_a_click_never_labels_an_item_it_did_not_show(tmp_path):
    pytest.importorskip("ipywidgets")
    path = tmp_path / "labels.jsonl"
    pairs = make_pairs(5)
    labeller = make_labeller(pairs, path)
    box = labelling_widget(labeller)
    progress, prompt, columns, notice = _parts(box)
    for _ in range(3):  # some other code answers the widget's queue behind its back
        labeller.answer("B")
    _buttons(box)["A is better"].click()  # the person answers item 1, still on screen
    rows = read_lines(path)
    assert len(rows) == 3 and [r["choice"] for r in rows] == ["B"] * 3  # item 4 was not labelled "A"
    assert "recorded nothing" in notice.value
    assert progress.value == "3 / 5 labelled"
    assert html_contains(_shown_option(columns[0]), labeller.current.option_a)
    assert labeller.current.item_id == item_id(pairs[3])
    _buttons(box)["A is better"].click()  # now on screen: this click counts
    assert read_lines(path)[-1]["item_id"] == item_id(pairs[3]) and notice.value == ""
    while not labeller.done:
        labeller.answer("skip")
    _buttons(box)["Tie"].click()  # the queue emptied elsewhere: nothing written, the widget says done
    assert len(read_lines(path)) == 4 and "All done" in prompt.value
    assert all(button.disabled for button in _buttons(box).values())
