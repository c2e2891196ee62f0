"""Preference data in TRL's formats: convert between them, validate them, and load two hub datasets.

TRL's dataset formats (https://huggingface.co/docs/trl/dataset_formats) vary along two axes.

Style. *Standard* rows hold plain strings; *conversational* rows hold lists of messages,
`[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]`, which a chat template turns
into text later.

Type. This module is about *preference* rows: a prompt and two completions, one preferred by a human.
- explicit prompt: `{"prompt": ..., "chosen": ..., "rejected": ...}`; chosen/rejected are only the completions.
- implicit prompt: `{"chosen": ..., "rejected": ...}`; both hold the full text and share the prompt as a prefix
  (how Anthropic's HH-RLHF is published).
Two neighbouring types appear too: *prompt-completion* `{"prompt", "completion"}` (SFT) and *language
modelling* `{"text"}` / `{"messages"}`; the standard <-> conversational conversions accept them as well.
A *ranking* (one prompt, k completions ordered best first, as in InstructGPT's labelling interface) is not a
TRL format; `ranking_to_pairwise` turns it into k(k-1)/2 preference rows (or only the k - 1 adjacent or
best-vs-rest ones). Notebook 07 and `utils.listwise` also learn from a ranking directly (Plackett-Luce).

Standard <-> conversational uses the HH transcript convention: each turn is "\n\n{Tag}: {content}" with
Tag "Human" for the user and "Assistant" for the assistant, and an explicit prompt ends with the generation
prompt "\n\nAssistant:" that the completion (" Sure, ...") continues. The round trip is exact when every tag
is followed by one space, which holds for every row of the HH-RLHF slice (checked in the tests).

Rows are plain dicts, so everything here works on a list of dicts and, via `dataset.map`, on a
`datasets.Dataset`. Columns other than the ones a function converts are carried over untouched.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The role -> tag map of HH-RLHF transcripts ("\n\nHuman: hi\n\nAssistant: hello").
HH_ROLE_TAGS: dict[str, str] = {"user": "Human", "assistant": "Assistant"}
# Where HH-RLHF prompts end: the last assistant tag before chosen and rejected diverge.
HH_ASSISTANT_PROMPT = "\n\nAssistant:"

COMPLETION_COLUMNS = ("completion", "chosen", "rejected")  # the columns that continue a prompt
IMDB_LABELS = {"negative": 0, "positive": 1}  # the CSV copy's sentiment words -> the hub's integer labels


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row of a data set."""

    row: int | None  # index of the row in the list, counting from 0 (None: the data set as a whole)
    column: str | None  # the offending column (None: the row as a whole)
    message: str  # what is wrong and what is allowed

    def __str__(self) -> str:
        where = [f"row {self.row}"] if self.row is not None else []
        where += [f"column {self.column!r}"] if self.column is not None else []
        return f"{', '.join(where) or 'data set'}: {self.message}"


class PreferenceDataError(ValueError):
    """Preference rows that a trainer must not see. `problems` lists every one found, not only the first."""

    MAX_LISTED = 10  # the message lists this many problems; `problems` holds them all

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = [f"  {p}" for p in self.problems[: self.MAX_LISTED]]
        if len(self.problems) > self.MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - self.MAX_LISTED} more (see .problems)")
        super().__init__(f"{len(self.problems)} problem(s) in preference data:\n" + "\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------------------------


def is_conversational(value: Any) -> bool:
    """True for a list of {"role", "content"} messages (TRL's conversational style), False for anything else."""
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def is_conversational_row(row: Mapping[str, Any]) -> bool:
    """True when the row's text columns hold message lists (decided, as in TRL, by the first one present)."""
    for key in ("prompt", "chosen", "rejected", "completion", "messages"):
        if key in row:
            return is_conversational(row[key])
    return False


# ----------------------------------------------------------------------------------------------------------
# Implicit <-> explicit prompt
# ----------------------------------------------------------------------------------------------------------


def _common_prefix_length(a: Sequence, b: Sequence) -> int:
    """Number of leading items (characters, or messages) that a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def to_explicit_prompt(row: Mapping[str, Any], boundary: str | None = None) -> dict[str, Any]:
    """Implicit -> explicit prompt: split the shared prefix of chosen and rejected off as the prompt.

    Conversational rows split after the last message the two share (as TRL's `extract_prompt`).
    Standard rows split the longest common character prefix at a sensible boundary, never mid-word:
    - `boundary` given (e.g. `HH_ASSISTANT_PROMPT`): the prompt ends right after the last occurrence of
      `boundary` inside the shared prefix, so for HH-RLHF it is the dialogue up to and including the final
      "\n\nAssistant:", and the completions start with the space that follows it.
    - `boundary=None`: the prompt ends before the last whitespace of the shared prefix, so the completions
      start with that whitespace ("The sky is" + " blue."). TRL cuts at the first differing character instead,
      which splits words when the completions share their first letters ("The ca" + "t" / "r"); on
      word-aligned rows the two agree.
    `prompt + chosen == row["chosen"]` always holds. Raises ValueError when the row already has a prompt,
    chosen equals rejected, or no prompt can be found.
    """
    if "prompt" in row:
        raise ValueError("row already has a 'prompt' column (explicit prompt); nothing to extract")
    chosen, rejected = _require(row, "chosen"), _require(row, "rejected")
    if chosen == rejected:
        raise ValueError("'chosen' and 'rejected' are identical: there is no preference and no prompt to extract")

    shared = _common_prefix_length(chosen, rejected)
    if is_conversational(chosen):
        cut = shared
    elif boundary is not None:
        position = chosen[:shared].rfind(boundary)
        if position < 0:
            raise ValueError(f"boundary {boundary!r} does not occur in the prefix shared by 'chosen' and 'rejected'")
        cut = position + len(boundary)
    else:
        cut = max(chosen.rfind(space, 0, shared) for space in (" ", "\n", "\t"))
    if cut <= 0:
        raise ValueError("'chosen' and 'rejected' share no prompt (no common prefix to split off)")

    extras = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:], **extras}


def to_implicit_prompt(row: Mapping[str, Any]) -> dict[str, Any]:
    """Explicit -> implicit prompt: prepend the prompt to both completions and drop the 'prompt' column."""
    prompt = _require(row, "prompt")
    chosen, rejected = _require(row, "chosen"), _require(row, "rejected")
    if is_conversational(prompt) != is_conversational(chosen) or is_conversational(chosen) != is_conversational(
        rejected
    ):
        raise ValueError("'prompt', 'chosen' and 'rejected' mix standard (str) and conversational (messages) styles")
    extras = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    return {"chosen": prompt + chosen, "rejected": prompt + rejected, **extras}


# ----------------------------------------------------------------------------------------------------------
# Standard <-> conversational
# ----------------------------------------------------------------------------------------------------------


def transcript_to_messages(text: str, role_tags: Mapping[str, str] = HH_ROLE_TAGS) -> list[dict[str, str]]:
    """Parse "\n\nHuman: hi\n\nAssistant: hello" into [{"role": "user", ...}, {"role": "assistant", ...}].

    The single space after each "Tag:" belongs to the format, not to the content, and is removed.
    """
    if not isinstance(text, str):
        raise ValueError(f"a transcript must be a string, got {type(text).__name__}")
    tag_to_role = {tag: role for role, tag in role_tags.items()}
    turn_start = re.compile("\n\n(" + "|".join(re.escape(tag) for tag in tag_to_role) + "):")
    starts = list(turn_start.finditer(text))
    if not starts or starts[0].start() != 0:
        expected = " or ".join(repr(f"\n\n{tag}:") for tag in tag_to_role)
        raise ValueError(f"a transcript must start with {expected}, got {text[:40]!r}")

    messages = []
    for this, following in zip(starts, starts[1:] + [None]):
        content = text[this.end() : following.start() if following else len(text)]
        content = content[1:] if content.startswith(" ") else content
        messages.append({"role": tag_to_role[this.group(1)], "content": content})
    return messages


def messages_to_transcript(
    messages: Sequence[Mapping[str, str]],
    role_tags: Mapping[str, str] = HH_ROLE_TAGS,
    add_generation_prompt: bool = False,
) -> str:
    """Render messages as an HH transcript; `add_generation_prompt` appends "\n\nAssistant:" for the model."""
    parts = []
    for i, message in enumerate(messages):
        if message.get("role") not in role_tags:
            raise ValueError(f"message {i} has role {message.get('role')!r}; allowed roles: {sorted(role_tags)}")
        parts.append(f"\n\n{role_tags[message['role']]}: {message['content']}")
    if add_generation_prompt:
        parts.append(f"\n\n{role_tags['assistant']}:")
    return "".join(parts)


def to_conversational(row: Mapping[str, Any], role_tags: Mapping[str, str] = HH_ROLE_TAGS) -> dict[str, Any]:
    """Standard -> conversational: parse every text column into messages ('text' becomes 'messages').

    When the prompt ends with the generation prompt "\n\nAssistant:", each completion is the rest of that
    assistant turn, so " Sure." becomes [{"role": "assistant", "content": "Sure."}].
    """
    if is_conversational_row(row):
        raise ValueError("row is already conversational (its text columns hold lists of messages)")
    generation_prompt = f"\n\n{role_tags['assistant']}:"
    prompt = row.get("prompt")
    continues_assistant_turn = isinstance(prompt, str) and prompt.endswith(generation_prompt)

    converted: dict[str, Any] = {}
    for key, value in row.items():
        if key == "prompt":
            text = value[: -len(generation_prompt)] if continues_assistant_turn else value
            converted["prompt"] = transcript_to_messages(text, role_tags)
        elif key in COMPLETION_COLUMNS:
            text = generation_prompt + value if continues_assistant_turn else value
            converted[key] = transcript_to_messages(text, role_tags)
        elif key == "text":
            converted["messages"] = transcript_to_messages(value, role_tags)
        else:
            converted[key] = value
    return converted


def to_standard(row: Mapping[str, Any], role_tags: Mapping[str, str] = HH_ROLE_TAGS) -> dict[str, Any]:
    """Conversational -> standard: the inverse of `to_conversational` ('messages' becomes 'text').

    When a prompt is followed by completions that start with an assistant message, the prompt gets the
    generation prompt "\n\nAssistant:" and the completions keep only what follows it (" Sure.").
    """
    if not is_conversational_row(row):
        raise ValueError("row is not conversational (its text columns are not lists of {'role', 'content'} messages)")
    generation_prompt = f"\n\n{role_tags['assistant']}:"
    completions = [row[key] for key in COMPLETION_COLUMNS if key in row]
    continues_assistant_turn = "prompt" in row and all(c and c[0].get("role") == "assistant" for c in completions)

    converted: dict[str, Any] = {}
    for key, value in row.items():
        if key == "prompt":
            converted["prompt"] = messages_to_transcript(value, role_tags, continues_assistant_turn)
        elif key in COMPLETION_COLUMNS:
            text = messages_to_transcript(value, role_tags)
            converted[key] = text[len(generation_prompt) :] if continues_assistant_turn else text
        elif key == "messages":
            converted["text"] = messages_to_transcript(value, role_tags)
        else:
            converted[key] = value
    return converted


# ----------------------------------------------------------------------------------------------------------
# Ranking -> pairwise
# ----------------------------------------------------------------------------------------------------------


RANKING_PAIRS = ("all", "adjacent", "best_vs_rest")  # which pairs of a ranking `ranking_to_pairwise` makes


def ranking_pair_positions(k: int, pairs: str = "all") -> list[tuple[int, int]]:
    """The (better, worse) positions of a ranking of ``k`` items (position 0 = best) that ``pairs`` selects.

    - "all": every pair, k(k-1)/2 of them, in order (0,1), (0,2), ..., (1,2), ... (InstructGPT's recipe);
    - "adjacent": the k - 1 neighbours (0,1), (1,2), ...: the fewest pairs that still imply the whole order;
    - "best_vs_rest": (0,1), (0,2), ..., (0,k-1): only who won, as when a labeller just picks the best of k.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"a ranking needs k >= 2 items, got {k!r}")
    if pairs == "all":
        return [(better, worse) for better in range(k) for worse in range(better + 1, k)]
    if pairs == "adjacent":
        return [(position, position + 1) for position in range(k - 1)]
    if pairs == "best_vs_rest":
        return [(0, worse) for worse in range(1, k)]
    raise ValueError(f"pairs must be one of {RANKING_PAIRS}, got {pairs!r}")


def ranking_to_pairwise(
    row: Mapping[str, Any], ranking_column: str = "completions", pairs: str = "all"
) -> list[dict[str, Any]]:
    """Pairs of a ranked list, preferred first: k completions (best first) give k(k-1)/2 preference rows.

    InstructGPT trained its reward model on all k(k-1)/2 pairs of each ranking. Other columns (the prompt,
    ids, ...) are copied into every pair. Rows come out in order (0,1), (0,2), ..., (1,2), ...
    ``pairs="adjacent"`` or ``"best_vs_rest"`` keeps only k - 1 of them (see `ranking_pair_positions`).
    """
    ranked = _require(row, ranking_column)
    if not isinstance(ranked, list) or len(ranked) < 2:
        raise ValueError(
            f"column {ranking_column!r} must be a list of at least 2 completions, best first; got {ranked!r:.80}"
        )
    for i in range(len(ranked)):
        for j in range(i):
            if ranked[i] == ranked[j]:
                raise ValueError(
                    f"column {ranking_column!r}: completions {j} and {i} are identical; "
                    "a ranking needs distinct completions"
                )
    prompt = {"prompt": row["prompt"]} if "prompt" in row else {}
    extras = {k: v for k, v in row.items() if k not in (ranking_column, "prompt")}
    return [
        {**prompt, "chosen": ranked[better], "rejected": ranked[worse], **extras}
        for better, worse in ranking_pair_positions(len(ranked), pairs)
    ]


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TooLong:
    """A row whose chosen or rejected sequence (prompt included) is over the length limit."""

    row: int  # index of the row
    column: str  # 'chosen' or 'rejected'
    length: int  # length_fn(prompt + completion)


def _text_problem(value: Any, conversational: bool) -> str | None:
    """Why a text cell is unusable, or None when it is fine."""
    if conversational:
        if not isinstance(value, list):
            kind = type(value).__name__
            return f"expected a list of {{'role', 'content'}} messages (row 0 is conversational), got {kind}"
        if not value:
            return "empty list of messages"
        for j, message in enumerate(value):
            if not (isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))):
                return f"message {j} must be a dict with string 'role' and 'content', got {message!r:.60}"
        if not any(message["content"].strip() for message in value):
            return "empty text: every message's content is empty or whitespace"
        return None
    if not isinstance(value, str):
        return f"expected a string (row 0 is standard style), got {type(value).__name__}"
    if not value.strip():
        return f"empty text (got {value!r}); a completion must contain non-whitespace characters"
    return None


def _shared_prompt_split(row: Mapping[str, Any], boundary: str | None) -> dict[str, Any] | None:
    """An implicit-prompt row split as `to_explicit_prompt` splits it, or None when it has no shared prompt.

    Standard rows split after the last `boundary` in the shared prefix when it occurs there (HH-RLHF's
    "\n\nAssistant:"), otherwise before its last whitespace.
    """
    for candidate in (boundary, None) if boundary is not None else (None,):
        try:
            return to_explicit_prompt(row, boundary=candidate)
        except ValueError:
            continue
    return None


def validate_preference_rows(
    rows: Iterable[Mapping[str, Any]],
    max_length: int | None = None,
    length_fn: Callable[[Any], int] = len,
    raise_on_too_long: bool = False,
    prompt_boundary: str | None = HH_ASSISTANT_PROMPT,
) -> list[TooLong]:
    """Check preference rows before training; return the rows over `max_length` (never drop them silently).

    Raises `PreferenceDataError` (a ValueError) listing every row index (counting from 0) and column with a
    missing column, a non-string or empty text (conversational rows: a malformed or empty message list),
    styles or prompt types that differ from row 0, or chosen identical to rejected.

    Implicit-prompt rows (the hub's layout, no 'prompt' column) hold whole transcripts, so a completion
    that is only whitespace hides behind the prompt: their completions are checked too, after splitting
    off the prompt that chosen and rejected share, as `to_explicit_prompt` does (after the last
    `prompt_boundary` in the shared prefix when it occurs there, else before its last whitespace). A row
    whose two texts share no prompt has its whole texts checked, as above.

    Length: for each row and each of 'chosen' and 'rejected', `length_fn(prompt + completion)` (the whole
    sequence the model reads; just the completion for implicit-prompt rows) is compared with `max_length`.
    `length_fn` defaults to characters; pass a tokenizer's count, e.g.
    `lambda text: len(tokenizer(text).input_ids)`, to measure in tokens. Over-long rows are returned as
    `TooLong(row, column, length)` records, or raised as a PreferenceDataError when `raise_on_too_long`.
    """
    rows = list(rows)
    if not rows:
        raise PreferenceDataError([Problem(None, None, "no rows")])
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")

    first = rows[0] if isinstance(rows[0], Mapping) else {}
    explicit_prompt = "prompt" in first
    conversational = is_conversational_row(first)
    columns = ("prompt", "chosen", "rejected") if explicit_prompt else ("chosen", "rejected")

    problems: list[Problem] = []
    too_long: list[TooLong] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            problems.append(Problem(i, None, f"expected a dict with columns {list(columns)}, got {type(row).__name__}"))
            continue
        row_problems = [
            Problem(i, column, f"missing column (expected columns {list(columns)})")
            for column in columns
            if column not in row
        ]
        if not explicit_prompt and "prompt" in row:
            row_problems.append(Problem(i, "prompt", "explicit prompt, but row 0 has none; do not mix the two"))
        for column in columns:
            if column in row and (message := _text_problem(row[column], conversational)):
                row_problems.append(Problem(i, column, message))
        if not row_problems and row["chosen"] == row["rejected"]:
            row_problems.append(Problem(i, "rejected", "identical to 'chosen': the pair expresses no preference"))
        if not row_problems and not explicit_prompt and (split := _shared_prompt_split(row, prompt_boundary)):
            for column in ("chosen", "rejected"):
                if message := _text_problem(split[column], conversational):
                    row_problems.append(
                        Problem(i, column, f"after the prompt it shares with the other column: {message}")
                    )
        problems += row_problems
        if row_problems or max_length is None:
            continue
        for column in ("chosen", "rejected"):
            length = length_fn(row["prompt"] + row[column] if explicit_prompt else row[column])
            if length > max_length:
                too_long.append(TooLong(i, column, length))

    if problems:
        raise PreferenceDataError(problems)
    if too_long and raise_on_too_long:
        raise PreferenceDataError(
            [Problem(t.row, t.column, f"length {t.length} > max_length {max_length}") for t in too_long]
        )
    return too_long


# ----------------------------------------------------------------------------------------------------------
# Hub-schema loaders
# ----------------------------------------------------------------------------------------------------------


def load_hh_rlhf_jsonl(path: str | Path) -> list[dict[str, str]]:
    """Load an Anthropic HH-RLHF file (JSONL, or .jsonl.gz as on the hub) as explicit-prompt rows.

    Each hub row is `{"chosen", "rejected"}`, two full transcripts sharing the dialogue so far. The prompt is
    that shared dialogue up to and including its last "\n\nAssistant:"; chosen and rejected are what follows
    (starting with a space), so `prompt + chosen` is the original chosen transcript. Rows are returned as they
    are, even unusable ones (the harmless-base test split has chosen completions that are a lone space; a
    pair whose two transcripts are identical comes back split at its last "\n\nAssistant:"): run
    `validate_preference_rows` to find them. Errors name the file and its line, counting from 1.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(_hh_explicit_row(json.loads(line)))
            except (KeyError, TypeError, ValueError) as error:  # ValueError covers json.JSONDecodeError
                raise ValueError(f"{path}, line {line_number}: not an HH-RLHF row ({error!r})") from error
    return rows


def _hh_explicit_row(record: Any) -> dict[str, str]:
    """One hub record {"chosen", "rejected"} as an explicit-prompt row (see `load_hh_rlhf_jsonl`)."""
    if not isinstance(record, dict):
        raise TypeError(f"expected a JSON object with 'chosen' and 'rejected', got {type(record).__name__}")
    chosen, rejected = record["chosen"], record["rejected"]
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise TypeError(
            f"'chosen' and 'rejected' must be strings, got {type(chosen).__name__} and {type(rejected).__name__}"
        )
    if chosen != rejected:
        return to_explicit_prompt({"chosen": chosen, "rejected": rejected}, boundary=HH_ASSISTANT_PROMPT)
    # Identical transcripts share everything, so the prompt ends at the last assistant tag of the whole
    # text; the row is kept for the validator, which reports it ("no preference").
    cut = chosen.rfind(HH_ASSISTANT_PROMPT)
    if cut < 0:
        raise ValueError(f"no {HH_ASSISTANT_PROMPT!r} in the (identical) transcripts")
    cut += len(HH_ASSISTANT_PROMPT)
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


def clean_html_breaks(text: str) -> str:
    """Replace each run of HTML line breaks (`<br />`, `<br/>`, `<br>`) and the spaces around it by one space."""
    return re.sub(r"\s*(?:<br\s*/?>\s*)+", " ", text, flags=re.IGNORECASE)


def _decode(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped (Excel writes one into its CSV exports)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save the file as UTF-8"
        ) from err


def _read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a CSV, JSONL or Parquet file as (where, record) pairs; CSV values stay strings.

    `where` names the row for error messages, counting from 1: "line N" in a text file (as an editor
    numbers lines: a CSV's header is line 1, a review with quoted line breaks is named by its first
    line), "row N" in a Parquet file.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.reader(io.StringIO(_decode(path), newline=""))
        header = next(reader, None)
        if header is None:
            return []
        records, start = [], reader.line_num + 1
        for fields in reader:
            where, start = f"line {start}", reader.line_num + 1
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}, {where}: {len(fields)} field(s), but the header (line 1) names {len(header)}: {header}"
                )
            records.append((where, dict(zip(header, fields))))
        return records
    if suffix in (".jsonl", ".json"):
        records = []
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines breaks at
        for line_number, line in enumerate(_decode(path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({err.msg}, column {err.colno})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {line_number}: expected a JSON object, got {type(record).__name__}")
            records.append((f"line {line_number}", record))
        return records
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with `datasets`; imported here so CSV users do not need it

        return [(f"row {i}", record) for i, record in enumerate(pq.read_table(path).to_pylist(), start=1)]
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .csv, .jsonl/.json or .parquet")


def _imdb_label(record: Mapping[str, Any], where: str) -> int:
    if "label" in record:  # hub schema: 0 = negative, 1 = positive (-1 marks the unlabelled 'unsupervised' split)
        raw = record["label"]
        label = int(raw) if isinstance(raw, (int, str)) and str(raw).strip().lstrip("-").isdigit() else None
        if label not in (0, 1):
            raise ValueError(
                f"{where}, column 'label': expected 0 or 1, got {raw!r} (the hub's 'unsupervised' split has no labels)"
            )
        return label
    sentiment = str(record["sentiment"]).strip().lower()  # CSV copy schema: 'positive' / 'negative'
    if sentiment not in IMDB_LABELS:
        raise ValueError(f"{where}, column 'sentiment': expected 'positive' or 'negative', got {record['sentiment']!r}")
    return IMDB_LABELS[sentiment]


def load_imdb(path: str | Path, clean_html: bool = True) -> list[dict[str, Any]]:
    """Load IMDB movie reviews as rows `{"text": str, "label": int}` with 1 = positive, 0 = negative.

    Accepts both schemas in circulation:
    - the hub's `stanfordnlp/imdb`: columns `text`, `label` (0/1), as JSONL, Parquet or CSV;
    - the common CSV copy: columns `review`, `sentiment` ('positive'/'negative').
    Files are read as UTF-8; a CSV saved by Excel (which starts with a byte-order mark) reads the same.
    `clean_html` replaces the `<br />` tags that the reviews keep from the original web pages by a space.

    Every error names the file and the row, counting from 1: "line N" in a CSV or JSONL file (as an
    editor numbers lines; a CSV's header is line 1), "row N" in a Parquet file. Rejected: a line that is
    not JSON, a missing field or column, a review text that is not a string or is empty (whitespace or
    HTML breaks only), a label other than 0/1 or 'positive'/'negative'.
    """
    path = Path(path)
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path}: no rows")
    columns = set(records[0][1])
    if {"text", "label"} <= columns:
        text_column, label_column = "text", "label"
    elif {"review", "sentiment"} <= columns:
        text_column, label_column = "review", "sentiment"
    else:
        raise ValueError(
            f"{path}: columns {sorted(columns)} match neither IMDB schema: ('text', 'label') or ('review', 'sentiment')"
        )

    rows = []
    for where, record in records:
        where = f"{path}, {where}"
        for column in (text_column, label_column):
            if column not in record:
                raise ValueError(f"{where}: missing field {column!r} (the first row has {sorted(columns)})")
        text = record[text_column]
        if not isinstance(text, str):
            raise ValueError(f"{where}, column {text_column!r}: expected a string, got {type(text).__name__}")
        text = clean_html_breaks(text) if clean_html else text
        if not clean_html_breaks(text).strip():
            raise ValueError(f"{where}, column {text_column!r}: empty review text (got {record[text_column]!r:.40})")
        rows.append({"text": text, "label": _imdb_label(record, where)})
    return rows


def _require(row: Mapping[str, Any], column: str) -> Any:
    if column not in row:
        raise ValueError(f"row has no {column!r} column; it has {sorted(row)}")
    return row[column]
