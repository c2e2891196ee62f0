"""REPORT.md is the assembly of docs/report/*.md, and a stale REPORT.md names the chapter that moved."""

import subprocess
import sys

import pytest

from utils import report


def _write_chapters(directory, chapters):
    directory.mkdir(parents=True)
    for name, text in chapters.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def chapters(tmp_path):
    # Written out of order on purpose: the report's order is the file names' order.
    return _write_chapters(
        tmp_path / "docs" / "report",
        {
            "02_second.md": "## Second\n\nline a\nline b\n",
            "01_first.md": "# Title\n\nintro\n\n\n",  # trailing blank lines are dropped
        },
    )


def test_report_md_is_the_assembly_of_docs_report():
    stale = report.check()
    assert not stale, "REPORT.md disagrees with docs/report/ (run `make report`):\n" + "\n".join(map(str, stale))


def test_assembly_is_banner_and_chapters_in_file_name_order_two_blank_lines_apart(chapters):
    assert report.assemble(chapters) == (report.BANNER + "\n\n\n# Title\n\nintro\n\n\n## Second\n\nline a\nline b\n")
    assert [p.name for p in report.chapter_paths(chapters)] == ["01_first.md", "02_second.md"]


def test_the_banner_says_the_file_is_generated_and_where_to_edit():
    assert report.BANNER.startswith("<!--") and report.BANNER.endswith("-->")
    assert "make report" in report.BANNER and "docs/report/" in report.BANNER


def test_an_edit_in_report_md_is_located_in_its_chapter_and_line(chapters):
    edited = report.assemble(chapters).replace("line b", "line B")
    [difference] = report.differences(edited, chapters)
    assert difference.source == str(chapters / "02_second.md")
    assert difference.line == 4
    assert (difference.expected, difference.found) == (("line b",), ("line B",))
    assert f"{chapters / '02_second.md'}, line 4" in str(difference)


def test_a_chapter_edited_after_the_last_assembly_is_named(chapters):
    old = report.assemble(chapters)
    (chapters / "01_first.md").write_text("# Title\n\nintro, revised\n", encoding="utf-8")
    [difference] = report.differences(old, chapters)
    assert (difference.source, difference.line) == (str(chapters / "01_first.md"), 3)


def test_a_new_chapter_missing_from_report_md_is_named(chapters):
    old = report.assemble(chapters)
    (chapters / "03_third.md").write_text("## Third\n", encoding="utf-8")
    [difference] = report.differences(old, chapters)
    assert difference.source == str(chapters / "03_third.md")
    assert difference.found == ()


def test_extra_text_at_the_end_of_report_md_is_reported(chapters):
    [difference] = report.differences(report.assemble(chapters) + "stray\n", chapters)
    assert (difference.source, difference.line, difference.found) == (
        str(chapters / "02_second.md"),
        5,
        ("stray",),
    )


def test_a_blank_line_more_between_chapters_is_located_at_the_next_chapter(chapters):
    text = report.assemble(chapters).replace("\n\n\n## Second", "\n\n\n\n## Second")
    [difference] = report.differences(text, chapters)
    # An inserted blank line between two blank lines has no single position; any before line 2 is right.
    assert difference.source == str(chapters / "02_second.md") and difference.line <= 1
    assert (difference.expected, difference.found) == ((), ("",))


def test_a_missing_trailing_newline_is_a_difference(chapters):
    assert report.differences(report.assemble(chapters).rstrip("\n"), chapters)
    assert report.differences(report.assemble(chapters), chapters) == []


def test_an_old_banner_is_reported_as_the_banner(chapters):
    text = report.assemble(chapters).replace(report.BANNER, "<!-- hand-assembled -->")
    [difference] = report.differences(text, chapters)
    assert (difference.source, difference.line) == ("the banner", 1)


def test_no_chapters_and_empty_chapters_are_clear_errors(tmp_path, chapters):
    with pytest.raises(FileNotFoundError, match="holds no \\*.md file"):
        report.assemble(tmp_path / "nowhere")
    (chapters / "05_empty.md").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="05_empty.md is empty"):
        report.assemble(chapters)


def test_check_mode_of_the_command_passes_on_the_committed_report():
    completed = subprocess.run(
        [sys.executable, "-m", "utils.report", "--check"],
        cwd=report.ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr


def test_one_title_and_every_chapter_opens_at_the_second_heading_level():
    # REPORT.md is one document: a single "# " title, and each chapter a "## " section, so that the chapters
    # nest under the title in a rendered outline instead of posing as documents of their own.
    first, *rest = report.chapter_paths()
    assert first.read_text(encoding="utf-8").startswith("# ")
    for path in rest:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("## "), f"{path.name} opens with {lines[0]!r}, not a '## ' heading"
        in_code = False
        for number, line in enumerate(lines, 1):
            in_code ^= line.startswith("```")
            assert in_code or not line.startswith("# "), f"{path.name}, line {number}: another title {line!r}"
