"""Collect human preferences: show a prompt and two completions, record which one the annotator prefers.

This is the data-collection step of RLHF in miniature (InstructGPT's labellers did the same at scale).
The design has two layers:

- `PreferenceLabeller`, the core: serves items, takes answers through `answer("A" | "B" | "tie" | "skip")`
  and appends one TRL preference row per answer to a JSONL file. It has no widget dependency, so it can be
  driven from a test, a script or any UI.
- `labelling_widget(labeller)`, a thin ipywidgets front end (the prompt, options A and B as two boxed
  columns, four buttons, a progress label) that only calls the core. It uses API common to ipywidgets 7.7
  and 8. A labeller is one annotator's queue: a script that labels the same pairs (a simulated annotator,
  say) gets a labeller of its own, or it empties the queue the person at the widget is working through.

What a row looks like (one JSON object per line):

    {"prompt": ..., "chosen": ..., "rejected": ..., "tie": false, "choice": "A", "swapped": true,
     "item_id": "3f2a...", "annotator_id": "alice", "timestamp": "2025-01-01T12:00:00+00:00"}

- Ties are written, as rows with `"tie": true` (chosen/rejected then hold the completions in the order they
  were displayed, A first). Writing them keeps the record complete (how often annotators cannot decide is
  itself a signal about the data) and lets a restarted session skip them. Rows that a trainer should see are
  the ones with `"tie": false`: `load_preference_labels(path)` returns exactly those.
- Skips write nothing, so a skipped item is served again in the next session.
- Position bias: people favour whichever option is shown first. So each item's completions are shown in
  an order drawn from an RNG seeded by (seed, item_id); `swapped: true` means `completion_b` was shown as A.
  The order depends only on the seed and the item, so a resumed session shows the same item the same way.
- Crash safety: the file is opened in append mode and closed (hence flushed) after every answer, so an
  interrupted session loses at most the answer being written. A new labeller on the same file skips every
  item this annotator already answered (ties included).
"""

from __future__ import annotations

import hashlib
import html
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CHOICES = ("A", "B", "tie", "skip")


@dataclass(frozen=True)
class DisplayedItem:
    """One comparison as the annotator sees it: the completions already in display order."""

    item_id: str  # stable id of the underlying pair (a hash of its texts), used for resuming
    prompt: str
    option_a: str  # shown on the left, labelled A
    option_b: str  # shown on the right, labelled B
    swapped: bool  # True when option_a is the pair's completion_b


def item_id(pair: Mapping[str, str]) -> str:
    """A stable id for a (prompt, completion_a, completion_b) pair: the first 16 hex digits of a SHA-256."""
    key = json.dumps([pair["prompt"], pair["completion_a"], pair["completion_b"]], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PreferenceLabeller:
    """Serve pairs to one annotator and append their preferences to a JSONL file, resuming where they stopped.

    Args:
        pairs: dicts with string fields 'prompt', 'completion_a', 'completion_b' (the names carry no
            preference; which one is displayed first is randomised).
        out_path: the JSONL file to append to; created if missing. Several annotators may share a file.
        annotator_id: who is labelling; recorded on every row and used to find what they already did.
        seed: seeds the display order of each item (same seed and item -> same order).
        clock: returns the current time (tests pass a fixed one); timestamps are written in ISO 8601.
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, str]],
        out_path: str | Path,
        annotator_id: str,
        seed: int = 0,
        clock: Callable[[], datetime] = _utc_now,
    ):
        if not isinstance(annotator_id, str) or not annotator_id.strip():
            raise ValueError(f"annotator_id must be a non-empty string, got {annotator_id!r}")
        self.out_path = Path(out_path)
        self.annotator_id = annotator_id
        self.seed = seed
        self.clock = clock
        self.pairs = list(pairs)
        self._ids = [self._check_pair(i, pair) for i, pair in enumerate(self.pairs)]
        first_index: dict[str, int] = {}
        for i, pid in enumerate(self._ids):
            if pid in first_index:  # the same item twice would be labelled twice by the same person
                raise ValueError(f"pairs[{i}] repeats pairs[{first_index[pid]}] (same prompt and completions)")
            first_index[pid] = i
        done = self._ids_already_labelled()
        self._queue = [i for i, pid in enumerate(self._ids) if pid not in done]  # indices still to serve
        self.labelled_before = len(self.pairs) - len(self._queue)  # answered in earlier sessions
        self.labelled_now = 0  # rows written in this session (A, B or tie)
        self.skipped_now = 0

    @staticmethod
    def _check_pair(index: int, pair: Mapping[str, str]) -> str:
        """The pair's item id, after checking that it has the three text fields."""
        if not isinstance(pair, Mapping):
            raise ValueError(f"pairs[{index}] must be a dict with 'prompt', 'completion_a', 'completion_b'")
        for field in ("prompt", "completion_a", "completion_b"):
            if not isinstance(pair.get(field), str):
                raise ValueError(f"pairs[{index}]: field {field!r} must be a string, got {pair.get(field)!r:.60}")
        if pair["completion_a"] == pair["completion_b"]:
            raise ValueError(f"pairs[{index}]: 'completion_a' and 'completion_b' are identical; nothing to compare")
        return item_id(pair)

    def _ids_already_labelled(self) -> set[str]:
        """Item ids this annotator answered in earlier sessions, read from the output file."""
        if not self.out_path.exists():
            return set()
        done = set()
        with open(self.out_path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{self.out_path}, line {line_number}: not valid JSON ({error.msg}); "
                        "fix or remove that line to resume"
                    ) from error
                if row.get("annotator_id") == self.annotator_id:
                    done.add(row.get("item_id"))
        return done

    # ------------------------------------------------------------------ what the UI reads

    @property
    def done(self) -> bool:
        """True when every item has been answered or skipped in this session."""
        return not self._queue

    @property
    def current(self) -> DisplayedItem | None:
        """The item to show now, completions in display order; None when done."""
        if self.done:
            return None
        index = self._queue[0]
        pair, pid = self.pairs[index], self._ids[index]
        swapped = random.Random(f"{self.seed}:{pid}").random() < 0.5  # str seeds hash deterministically
        a, b = (pair["completion_b"], pair["completion_a"]) if swapped else (pair["completion_a"], pair["completion_b"])
        return DisplayedItem(item_id=pid, prompt=pair["prompt"], option_a=a, option_b=b, swapped=swapped)

    def progress(self) -> str:
        """A one-line status, e.g. '12 / 40 labelled (3 skipped this session)'."""
        labelled = self.labelled_before + self.labelled_now
        text = f"{labelled} / {len(self.pairs)} labelled"
        return text + (f" ({self.skipped_now} skipped this session)" if self.skipped_now else "")

    # ------------------------------------------------------------------ what the UI calls

    def answer(self, choice: str) -> dict[str, Any] | None:
        """Record the annotator's choice for the current item and move on; return the row written (None on skip).

        "A" / "B": the option shown as A / B is preferred. "tie": written with `tie: true`. "skip": nothing
        written. Raises ValueError for any other choice and RuntimeError when there is nothing left to label.
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        item = self.current
        if item is None:
            raise RuntimeError("no item left to label: every pair has been answered or skipped")
        self._queue.pop(0)
        if choice == "skip":
            self.skipped_now += 1
            return None

        chosen, rejected = (item.option_b, item.option_a) if choice == "B" else (item.option_a, item.option_b)
        row = {
            "prompt": item.prompt,
            "chosen": chosen,
            "rejected": rejected,
            "tie": choice == "tie",
            "choice": choice,
            "swapped": item.swapped,
            "item_id": item.item_id,
            "annotator_id": self.annotator_id,
            "timestamp": self.clock().isoformat(),
        }
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out_path, "a", encoding="utf-8") as f:  # closed at once: the line is on disk
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.labelled_now += 1
        return row


def load_preference_labels(path: str | Path, include_ties: bool = False) -> list[dict[str, Any]]:
    """Read a labelling file back; by default without ties, i.e. the rows a preference trainer can use."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows if include_ties else [row for row in rows if not row.get("tie")]


# ---------------------------------------------------------------------- the widget


def _text_html(text: str) -> str:
    """Escape text for display and keep its line breaks."""
    return f"<div style='white-space: pre-wrap'>{html.escape(text)}</div>"


def _as_html(title: str, text: str) -> str:
    return f"<b>{html.escape(title)}</b>{_text_html(text)}"


def _option_box(widgets: Any, title: str) -> tuple[Any, Any]:
    """A bordered column headed by ``title``; returns (the box, the HTML that holds the option's text).

    Only layout properties that ipywidgets 7.7 (Colab) and 8 both sync are used: ``border`` (one trait in 7;
    in 8 a shorthand that sets the four ``border_*`` traits), ``padding``, ``width`` and ``flex``. Both
    versions size widgets as border-box, so two columns of width 50% fill the row border included; the flex
    basis of 0 makes them equally wide whatever their text, and the text wraps inside its column.
    """
    text = widgets.HTML(value="")
    box = widgets.VBox(
        children=[widgets.HTML(value=f"<b>{html.escape(title)}</b>"), text],
        layout=widgets.Layout(border="1px solid #9e9e9e", padding="4px 10px", width="50%", flex="1 1 0%"),
    )
    return box, text


def labelling_widget(labeller: PreferenceLabeller):
    """An ipywidgets UI for `labeller`: the prompt, options A and B in two boxed columns, four buttons, progress.

    Uses only widgets.Button / HTML / Label / HBox / VBox / Layout and `on_click`, which behave the same in
    ipywidgets 7.7 and 8. Returns the VBox; display it in a notebook cell. Buttons are disabled when done.

    A click answers the item the widget shows. If the labeller moved on without the widget (some other code
    called `answer()`), the click records nothing, since the item it would label is one the person never
    saw: the widget shows the labeller's current item instead, with a note.
    """
    import ipywidgets as widgets  # imported here so the core class needs no widget library

    progress = widgets.Label(value="")
    prompt = widgets.HTML(value="")
    box_a, option_a = _option_box(widgets, "A")
    box_b, option_b = _option_box(widgets, "B")
    notice = widgets.HTML(value="")
    buttons = {
        "A": widgets.Button(description="A is better"),
        "B": widgets.Button(description="B is better"),
        "tie": widgets.Button(description="Tie"),
        "skip": widgets.Button(description="Skip"),
    }
    shown: list[DisplayedItem | None] = [None]  # the item on screen, which is what a click answers

    def refresh() -> None:
        item = shown[0] = labeller.current
        progress.value = labeller.progress()
        if item is None:
            prompt.value = "<b>All done - thank you!</b>"
            option_a.value = option_b.value = ""
        else:
            prompt.value = _as_html("Prompt", item.prompt)
            option_a.value = _text_html(item.option_a)
            option_b.value = _text_html(item.option_b)
        for button in buttons.values():
            button.disabled = item is None

    def on_choice(choice: str) -> Callable[[Any], None]:
        def handler(_button: Any) -> None:
            if shown[0] is None:  # a double click after the last item is ignored
                notice.value = ""
            elif labeller.current != shown[0]:
                notice.value = (
                    "<i>This queue was answered elsewhere since it was shown, so that click recorded "
                    "nothing. Here is the item it is at now.</i>"
                )
            else:
                labeller.answer(choice)
                notice.value = ""
            refresh()

        return handler

    for choice, button in buttons.items():
        button.on_click(on_choice(choice))
    refresh()
    return widgets.VBox(
        children=[
            progress,
            prompt,
            widgets.HBox(children=[box_a, box_b], layout=widgets.Layout(width="100%")),
            notice,
            widgets.HBox(children=list(buttons.values())),
        ]
    )
