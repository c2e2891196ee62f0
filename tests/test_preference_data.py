"""Preference-data conversions, validation and hub loaders: hand-made rows, TRL's own helpers, real slices.

The real slices live in ../shared/data next to the repository (HH-RLHF harmless-base test, first 1000 rows;
700 IMDB reviews in the CSV copy schema); tests that need them skip when that folder is absent.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import trl

from utils.preference_data import (
    HH_ASSISTANT_PROMPT,
    PreferenceDataError,
    TooLong,
    clean_html_breaks,
    is_conversational,
    is_conversational_row,
    load_hh_rlhf_jsonl,
    load_imdb,
    messages_to_transcript,
    ranking_to_pairwise,
    to_conversational,
    to_explicit_prompt,
    to_implicit_prompt,
    to_standard,
    transcript_to_messages,
    validate_preference_rows,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_PATH = SHARED_DATA / "hh_rlhf_harmless_base_test_first1000.jsonl"
IMDB_PATH = SHARED_DATA / "imdb_reviews_sample700.csv"


def _require_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real-data slice {path.name} not found in {SHARED_DATA} (only present next to the course repo)")
    return path


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------- implicit <-> explicit prompt


def test_explicit_prompt_splits_hh_transcript_at_last_assistant_tag():
    dialogue = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant:"
    row = {"chosen": dialogue + " Blue.", "rejected": dialogue + " Blah.", "id": 7}
    explicit = to_explicit_prompt(row, boundary=HH_ASSISTANT_PROMPT)
    # The shared prefix runs to " Bl", but the prompt stops at the last "\n\nAssistant:" inside it.
    assert explicit == {"prompt": dialogue, "chosen": " Blue.", "rejected": " Blah.", "id": 7}
    assert to_implicit_prompt(explicit) == row


def test_explicit_prompt_without_boundary_never_splits_a_word():
    row = {"chosen": "The cat sat.", "rejected": "The car sat."}
    assert to_explicit_prompt(row) == {"prompt": "The", "chosen": " cat sat.", "rejected": " car sat."}
    # One completion is a prefix of the other: back off to the last space of the shorter one.
    row = {"chosen": "Hi there", "rejected": "Hi there friend"}
    assert to_explicit_prompt(row) == {"prompt": "Hi", "chosen": " there", "rejected": " there friend"}


@pytest.mark.parametrize(
    "row",
    [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "Paris is the capital. Yes.", "rejected": "Paris is the capital. No, Lyon."},
        {
            "chosen": [_user("What colour is the sky?"), _assistant("Blue.")],
            "rejected": [_user("What colour is the sky?"), _assistant("Green.")],
        },
        {
            "chosen": [_user("Hi"), _assistant("Hello"), _user("Sky colour?"), _assistant("Blue.")],
            "rejected": [_user("Hi"), _assistant("Hello"), _user("Sky colour?"), _assistant("Red.")],
        },
    ],
)
def test_explicit_prompt_agrees_with_trl_on_word_aligned_and_conversational_rows(row):
    assert to_explicit_prompt(row) == trl.extract_prompt(row)


def test_explicit_prompt_errors():
    with pytest.raises(ValueError, match="identical"):
        to_explicit_prompt({"chosen": "same", "rejected": "same"})
    with pytest.raises(ValueError, match="already has a 'prompt'"):
        to_explicit_prompt({"prompt": "p", "chosen": "a", "rejected": "b"})
    with pytest.raises(ValueError, match="does not occur"):
        to_explicit_prompt({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: b"}, boundary=HH_ASSISTANT_PROMPT)
    with pytest.raises(ValueError, match="share no prompt"):
        to_explicit_prompt({"chosen": "yes", "rejected": "no"})
    with pytest.raises(ValueError, match="no 'rejected' column"):
        to_explicit_prompt({"chosen": "yes"})


def test_implicit_prompt_for_conversational_rows_and_style_mixing():
    row = {"prompt": [_user("Sky?")], "chosen": [_assistant("Blue.")], "rejected": [_assistant("Red.")]}
    assert to_implicit_prompt(row) == {
        "chosen": [_user("Sky?"), _assistant("Blue.")],
        "rejected": [_user("Sky?"), _assistant("Red.")],
    }
    with pytest.raises(ValueError, match="mix standard"):
        to_implicit_prompt({"prompt": "Sky?", "chosen": [_assistant("Blue.")], "rejected": [_assistant("Red.")]})


# ---------------------------------------------------------------- standard <-> conversational


def test_transcript_round_trip_and_errors():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello.\nHow can I help?\n\nHuman: Thanks"
    messages = transcript_to_messages(text)
    assert messages == [_user("Hi there"), _assistant("Hello.\nHow can I help?"), _user("Thanks")]
    assert messages_to_transcript(messages) == text
    assert messages_to_transcript(messages[:1], add_generation_prompt=True) == "\n\nHuman: Hi there\n\nAssistant:"
    with pytest.raises(ValueError, match="must start with"):
        transcript_to_messages("Hi\n\nHuman: x")
    with pytest.raises(ValueError, match="role 'system'"):
        messages_to_transcript([{"role": "system", "content": "Be nice."}])
    # Other tag sets work through role_tags.
    tags = {"user": "User", "assistant": "Bot", "system": "System"}
    assert transcript_to_messages("\n\nSystem: Be nice.\n\nUser: Hi", tags) == [
        {"role": "system", "content": "Be nice."},
        _user("Hi"),
    ]


def test_conversational_round_trip_explicit_preference_row():
    row = {
        "prompt": "\n\nHuman: Sky colour?\n\nAssistant:",
        "chosen": " Blue.",
        "rejected": " Red.\n\nHuman: Really?\n\nAssistant: No.",
        "source": "hand-made",
    }
    conversational = to_conversational(row)
    assert conversational == {
        "prompt": [_user("Sky colour?")],
        "chosen": [_assistant("Blue.")],
        "rejected": [_assistant("Red."), _user("Really?"), _assistant("No.")],
        "source": "hand-made",
    }
    assert is_conversational_row(conversational) and trl.is_conversational(conversational)
    assert to_standard(conversational) == row


def test_conversational_round_trip_implicit_prompt_completion_and_text_rows():
    implicit = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"}
    assert to_conversational(implicit) == {
        "chosen": [_user("Hi"), _assistant("Hello")],
        "rejected": [_user("Hi"), _assistant("Go away")],
    }
    assert to_standard(to_conversational(implicit)) == implicit

    prompt_completion = {"prompt": "\n\nHuman: 2+2?\n\nAssistant:", "completion": " 4"}
    assert to_conversational(prompt_completion) == {"prompt": [_user("2+2?")], "completion": [_assistant("4")]}
    assert to_standard(to_conversational(prompt_completion)) == prompt_completion

    language_modelling = {"text": "\n\nHuman: Hi\n\nAssistant: Hello"}
    assert to_conversational(language_modelling) == {"messages": [_user("Hi"), _assistant("Hello")]}
    assert to_standard({"messages": [_user("Hi"), _assistant("Hello")]}) == language_modelling


def test_conversion_direction_errors():
    with pytest.raises(ValueError, match="already conversational"):
        to_conversational({"chosen": [_assistant("a")], "rejected": [_assistant("b")]})
    with pytest.raises(ValueError, match="not conversational"):
        to_standard({"chosen": "a", "rejected": "b"})
    assert is_conversational([_user("x")]) and not is_conversational("x") and not is_conversational([])


# ---------------------------------------------------------------- ranking -> pairwise


def test_ranking_to_pairwise_gives_every_ordered_pair():
    row = {"prompt": "Q", "completions": ["best", "good", "bad", "worst"], "id": 3}
    pairs = ranking_to_pairwise(row)
    assert len(pairs) == 4 * 3 // 2
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("best", "good"), ("best", "bad"), ("best", "worst"), ("good", "bad"), ("good", "worst"), ("bad", "worst"),
    ]  # fmt: skip
    assert all(p["prompt"] == "Q" and p["id"] == 3 and set(p) == {"prompt", "chosen", "rejected", "id"} for p in pairs)
    validate_preference_rows(pairs)  # a clean ranking yields valid preference rows
    assert len(ranking_to_pairwise({"ranked": list("abcdefg")}, ranking_column="ranked")) == 7 * 6 // 2


def test_ranking_errors():
    with pytest.raises(ValueError, match="at least 2"):
        ranking_to_pairwise({"prompt": "Q", "completions": ["only"]})
    with pytest.raises(ValueError, match="completions 0 and 2 are identical"):
        ranking_to_pairwise({"prompt": "Q", "completions": ["a", "b", "a"]})


# ---------------------------------------------------------------- validation


def _problems(rows, **kwargs):
    with pytest.raises(PreferenceDataError) as info:
        validate_preference_rows(rows, **kwargs)
    assert isinstance(info.value, ValueError)
    return [(p.row, p.column) for p in info.value.problems], str(info.value)


GOOD = {"prompt": "Q:", "chosen": " yes", "rejected": " no"}


def test_valid_rows_pass_and_return_no_length_violations():
    assert validate_preference_rows([GOOD, {**GOOD, "chosen": " sure"}]) == []
    conversational = {"prompt": [_user("Q")], "chosen": [_assistant("yes")], "rejected": [_assistant("no")]}
    assert validate_preference_rows([conversational]) == []


@pytest.mark.parametrize(
    ("bad_row", "column", "message"),
    [
        ({"prompt": "Q:", "chosen": " yes"}, "rejected", "missing column"),
        ({"prompt": "Q:", "chosen": "   ", "rejected": " no"}, "chosen", "empty text"),
        ({"prompt": "", "chosen": " yes", "rejected": " no"}, "prompt", "empty text"),
        ({"prompt": "Q:", "chosen": 42, "rejected": " no"}, "chosen", "expected a string"),
        ({"prompt": "Q:", "chosen": None, "rejected": " no"}, "chosen", "got NoneType"),
        ({"prompt": "Q:", "chosen": " same", "rejected": " same"}, "rejected", "identical"),
        ({"prompt": "Q:", "chosen": [_assistant("a")], "rejected": " no"}, "chosen", "expected a string"),
    ],
)
def test_each_validation_error_names_row_and_column(bad_row, column, message):
    problems, text = _problems([GOOD, GOOD, bad_row])
    assert problems == [(2, column)]
    assert f"row 2, column {column!r}" in text and message in text


def test_validation_errors_for_row_shape_and_mixed_formats():
    assert _problems([GOOD, "not a dict"])[0] == [(1, None)]
    assert _problems([{"chosen": "a", "rejected": "b"}, GOOD])[0] == [(1, "prompt")]  # explicit among implicit
    assert _problems([GOOD, {"chosen": " a", "rejected": " b"}])[0] == [(1, "prompt")]  # implicit among explicit
    conversational = {"prompt": [_user("Q")], "chosen": [_assistant("yes")], "rejected": [_assistant("no")]}
    assert _problems([conversational, {**conversational, "chosen": [_assistant(" ")]}])[0] == [(1, "chosen")]
    assert _problems([conversational, {**conversational, "rejected": []}])[0] == [(1, "rejected")]
    assert _problems([conversational, {**conversational, "prompt": [{"role": "user"}]}])[0] == [(1, "prompt")]
    assert _problems([])[1].endswith("no rows")
    # Every problem is collected, not only the first.
    problems = _problems([GOOD, {"chosen": " a"}, {**GOOD, "rejected": ""}])[0]
    assert problems == [(1, "prompt"), (1, "rejected"), (2, "rejected")]
    with pytest.raises(ValueError, match="max_length"):
        validate_preference_rows([GOOD], max_length=0)


@pytest.mark.parametrize(
    ("bad_row", "column"),
    [
        # The hub's layout: whole transcripts, the empty reply hides behind the shared prompt.
        ({"chosen": "\n\nHuman: Hi?\n\nAssistant: ", "rejected": "\n\nHuman: Hi?\n\nAssistant: Hello."}, "chosen"),
        ({"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant:\n"}, "rejected"),
        ({"chosen": "Q: sky colour? A:  ", "rejected": "Q: sky colour? A: blue"}, "chosen"),  # no HH tags
        ({"chosen": [_user("Hi?"), _assistant(" ")], "rejected": [_user("Hi?"), _assistant("Hello.")]}, "chosen"),
        ({"chosen": [_user("Hi?")], "rejected": [_user("Hi?"), _assistant("Hello.")]}, "chosen"),  # no reply at all
    ],
)
def test_implicit_prompt_rows_with_an_empty_completion_are_rejected(bad_row, column):
    good = to_implicit_prompt({"prompt": "\n\nHuman: Hi?\n\nAssistant:", "chosen": " Hello.", "rejected": " Go."})
    if is_conversational_row(bad_row):
        good = to_conversational(good)
    problems, text = _problems([good, bad_row])
    assert problems == [(1, column)] and "after the prompt it shares with the other column" in text


def test_implicit_prompt_rows_that_share_no_prompt_or_a_whole_word_are_fine():
    # No shared prompt: the whole texts are the completions. Chosen a prefix of rejected, ending mid-text:
    # the split backs off to a word boundary, so " there" is a real (non-empty) completion.
    rows = [
        {"chosen": "yes", "rejected": "no"},
        {"chosen": "Hi there", "rejected": "Hi there friend"},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Sure", "rejected": "\n\nHuman: Hi\n\nAssistant: Sure thing"},
    ]
    assert validate_preference_rows(rows) == []


def test_length_limit_reports_rows_or_raises():
    rows = [GOOD, {"prompt": "Q:", "chosen": " a long answer", "rejected": " no"}]
    # prompt + chosen of row 1 is "Q: a long answer" = 16 characters; everything else is at most 6.
    assert validate_preference_rows(rows, max_length=10) == [TooLong(row=1, column="chosen", length=16)]
    assert validate_preference_rows(rows, max_length=16) == []
    words = validate_preference_rows(rows, max_length=2, length_fn=lambda text: len(text.split()))
    assert words == [TooLong(1, "chosen", 4)]
    problems, text = _problems(rows, max_length=10, raise_on_too_long=True)
    assert problems == [(1, "chosen")] and "length 16 > max_length 10" in text


# ---------------------------------------------------------------- HH-RLHF, real slice


@pytest.fixture(scope="module")
def hh_rows():
    return load_hh_rlhf_jsonl(_require_file(HH_PATH))


@pytest.fixture(scope="module")
def hh_raw():
    with open(_require_file(HH_PATH), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_hh_loader_extracts_the_shared_prompt(hh_rows, hh_raw):
    assert len(hh_rows) == len(hh_raw) == 1000
    for row, raw in zip(hh_rows, hh_raw):
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"].startswith("\n\nHuman:") and row["prompt"].endswith(HH_ASSISTANT_PROMPT)
        assert row["prompt"] + row["chosen"] == raw["chosen"]
        assert row["prompt"] + row["rejected"] == raw["rejected"]
        # Each completion is the final assistant turn alone, starting with the space after "Assistant:".
        for completion in (row["chosen"], row["rejected"]):
            assert completion.startswith(" ")
            assert "\n\nHuman:" not in completion and HH_ASSISTANT_PROMPT not in completion
    assert [to_implicit_prompt(row) for row in hh_rows] == hh_raw


def test_hh_loader_reads_gzip_like_the_hub(tmp_path, hh_raw):
    import gzip

    path = tmp_path / "test.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in hh_raw[:5])
    assert [to_implicit_prompt(r) for r in load_hh_rlhf_jsonl(path)] == hh_raw[:5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(hh_raw[0]) + "\n" + json.dumps({"chosen": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        load_hh_rlhf_jsonl(bad)


def test_validator_finds_the_empty_chosen_completions_in_hh(hh_rows):
    # Three rows of this split have a chosen reply that is a lone space: training on them teaches "say nothing".
    with pytest.raises(PreferenceDataError) as info:
        validate_preference_rows(hh_rows)
    assert [(p.row, p.column) for p in info.value.problems] == [(86, "chosen"), (516, "chosen"), (925, "chosen")]
    clean = [row for i, row in enumerate(hh_rows) if i not in (86, 516, 925)]
    too_long = validate_preference_rows(clean, max_length=2000)
    expected = [
        (i, column, len(row["prompt"] + row[column]))
        for i, row in enumerate(clean)
        for column in ("chosen", "rejected")
        if len(row["prompt"] + row[column]) > 2000
    ]
    assert [(t.row, t.column, t.length) for t in too_long] == expected and 0 < len(expected) < 2 * len(clean)


def test_validator_finds_the_same_empty_completions_in_the_hub_layout(hh_raw):
    # The hub's own rows (no prompt column): the three lone-space replies hide behind the shared dialogue.
    with pytest.raises(PreferenceDataError) as info:
        validate_preference_rows(hh_raw)
    assert [(p.row, p.column) for p in info.value.problems] == [(86, "chosen"), (516, "chosen"), (925, "chosen")]
    assert hh_raw[86]["chosen"].endswith(HH_ASSISTANT_PROMPT + " ")


def test_hh_loader_returns_identical_pairs_for_the_validator(tmp_path, hh_raw):
    path = tmp_path / "with_tie.jsonl"
    tie = {"chosen": hh_raw[1]["chosen"], "rejected": hh_raw[1]["chosen"]}
    path.write_text("".join(json.dumps(r) + "\n" for r in [hh_raw[0], tie, hh_raw[2]]), encoding="utf-8")
    rows = load_hh_rlhf_jsonl(path)  # used to stop here with "not an HH-RLHF row"
    assert len(rows) == 3 and [to_implicit_prompt(r) for r in rows] == [hh_raw[0], tie, hh_raw[2]]
    assert rows[1]["prompt"].endswith(HH_ASSISTANT_PROMPT) and rows[1]["chosen"] == rows[1]["rejected"]
    assert HH_ASSISTANT_PROMPT not in rows[1]["chosen"]  # split at the LAST assistant tag
    with pytest.raises(PreferenceDataError) as info:
        validate_preference_rows(rows)
    assert [(p.row, p.column) for p in info.value.problems] == [(1, "rejected")]
    assert "identical" in str(info.value)
    # Rows that are not HH transcripts still stop the loader, with the file and the line (from 1).
    path.write_text(json.dumps(hh_raw[0]) + "\n" + json.dumps({"chosen": "same", "rejected": "same"}) + "\n")
    with pytest.raises(ValueError, match=r"with_tie.jsonl, line 2: not an HH-RLHF row"):
        load_hh_rlhf_jsonl(path)
    path.write_text(json.dumps({"chosen": None, "rejected": None}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: .*must be strings"):
        load_hh_rlhf_jsonl(path)


def test_hh_conversational_round_trip_is_exact(hh_rows):
    for row in hh_rows:
        conversational = to_conversational(row)
        assert conversational["prompt"][-1]["role"] == "user"  # the prompt stops before the reply
        assert conversational["chosen"][0]["role"] == "assistant"
        assert to_standard(conversational) == row
    # Conversational implicit rows split where TRL splits them: after the last shared message.
    implicit = to_conversational(to_implicit_prompt(hh_rows[0]))
    assert to_explicit_prompt(implicit) == trl.extract_prompt(implicit)


# ---------------------------------------------------------------- IMDB


def test_imdb_csv_copy_schema_real_slice():
    path = _require_file(IMDB_PATH)
    rows = load_imdb(path)
    raw = load_imdb(path, clean_html=False)
    assert len(rows) == 700
    assert collections.Counter(r["label"] for r in rows) == {0: 362, 1: 338}
    assert all(set(r) == {"text", "label"} and isinstance(r["label"], int) for r in rows)
    assert sum("<br" in r["text"] for r in raw) == 415
    assert not any("<br" in r["text"].lower() for r in rows)
    assert rows[0]["text"].startswith("One of the other reviewers has mentioned")
    assert "happened with me. The first thing" in rows[0]["text"]  # "<br /><br />" became one space


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_imdb_hub_schema_in_every_file_type(tmp_path, suffix):
    hub_rows = [
        {"text": "Great film.<br /><br />Loved it.", "label": 1},
        {"text": 'Dull, "long", and\nslow.', "label": 0},
        {"text": "Fine<br/>I guess", "label": 1},
    ]
    path = tmp_path / f"imdb{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in hub_rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(hub_rows), path)
    else:
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(hub_rows)
    assert load_imdb(path) == [
        {"text": "Great film. Loved it.", "label": 1},
        {"text": 'Dull, "long", and\nslow.', "label": 0},
        {"text": "Fine I guess", "label": 1},
    ]
    assert load_imdb(path, clean_html=False) == hub_rows


def test_imdb_errors(tmp_path):
    unlabelled = tmp_path / "unsupervised.jsonl"
    unlabelled.write_text(json.dumps({"text": "no label", "label": -1}) + "\n")
    with pytest.raises(ValueError, match=r"unsupervised.jsonl, line 1, column 'label': expected 0 or 1, got -1"):
        load_imdb(unlabelled)
    wrong_schema = tmp_path / "wrong.jsonl"
    wrong_schema.write_text(json.dumps({"sentence": "x", "polarity": 1}) + "\n")
    with pytest.raises(ValueError, match="match neither IMDB schema"):
        load_imdb(wrong_schema)
    bad_sentiment = tmp_path / "bad.csv"
    bad_sentiment.write_text("review,sentiment\ngood,positive\nmeh,neutral\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3, column 'sentiment'.*'neutral'"):  # header = line 1
        load_imdb(bad_sentiment)
    with pytest.raises(ValueError, match="unsupported file type"):
        load_imdb(tmp_path / "imdb.txt")


def test_clean_html_breaks():
    assert clean_html_breaks("a.<br /><br />b") == "a. b"
    assert clean_html_breaks("a <BR> b<br/>c") == "a b c"
    assert clean_html_breaks("no tags here") == "no tags here"


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


BAD_IMDB_FILES = [
    # A broken JSONL line: the file and its line, counting from 1 (not json's own "line 1").
    ("broken.jsonl", '{"text": "ok", "label": 1}\n\n{"text": "cut sh\n', r"broken.jsonl, line 3: not valid JSON"),
    ("list.jsonl", '{"text": "ok", "label": 1}\n[1, 0]\n', r"list.jsonl, line 2: expected a JSON object, got list"),
    # A missing field: file, line and field (not a bare KeyError: 'text').
    ("missing.jsonl", '{"text": "ok", "label": 1}\n{"label": 0}\n', r"missing.jsonl, line 2: missing field 'text'"),
    ("missing.csv", "review,sentiment\ngood,positive\nbad\n", r"missing.csv, line 3: 1 field\(s\), but the header"),
    # An empty review text, also one that is only HTML breaks.
    (
        "empty.jsonl",
        '{"text": "ok", "label": 1}\n{"text": "  ", "label": 0}\n',
        r"empty.jsonl, line 2, column 'text': empty",
    ),
    (
        "breaks.csv",
        'review,sentiment\n"good",positive\n"<br /><br />",negative\n',
        r"breaks.csv, line 3, column 'review': empty",
    ),
    # A quoted review spanning lines: the next row is named by the line it starts on.
    (
        "multiline.csv",
        'review,sentiment\n"two\nlines",positive\nmeh,neutral\n',
        r"multiline.csv, line 4, column 'sentiment'",
    ),
    ("latin1.csv", "review,sentiment\ngood,positive\ncaf\xe9,positive\n", r"latin1.csv, line 3: not UTF-8"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_IMDB_FILES, ids=[case[0] for case in BAD_IMDB_FILES])
def test_imdb_errors_name_the_file_the_line_and_the_field(tmp_path, name, content, message):
    path = _write(tmp_path / name, content, "latin-1" if name.startswith("latin1") else "utf-8")
    with pytest.raises(ValueError, match=message):
        load_imdb(path)


def test_imdb_parquet_errors_count_rows_from_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "imdb.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "good", "label": 1}, {"text": "", "label": 0}]), path)
    with pytest.raises(ValueError, match=r"imdb.parquet, row 2, column 'text': empty"):
        load_imdb(path)


def test_imdb_csv_saved_by_excel_with_a_byte_order_mark(tmp_path):
    content = 'review,sentiment\r\n"Great film.<br />Loved it.",positive\r\nDull.,negative\r\n'
    plain = load_imdb(_write(tmp_path / "plain.csv", content))
    excel = load_imdb(_write(tmp_path / "excel.csv", content, "utf-8-sig"))  # used to fail on '\ufeffreview'
    assert (tmp_path / "excel.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert excel == plain == [{"text": "Great film. Loved it.", "label": 1}, {"text": "Dull.", "label": 0}]
    jsonl = _write(tmp_path / "excel.jsonl", '{"text": "Fine.", "label": 1}\n', "utf-8-sig")
    assert load_imdb(jsonl) == [{"text": "Fine.", "label": 1}]
