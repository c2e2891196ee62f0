"""REPORT.md's internal links land: every `[text](#anchor)` names a heading or an `<a id>` of the assembled report,
and every entry of the reference list is cited from the text."""

import re
from collections import Counter

from utils import report

LINK = re.compile(r"\]\(#([^)\s]+)\)")
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")


def github_slug(heading: str) -> str:
    """The fragment GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def heading_anchors(markdown: str) -> list[str]:
    """The fragments of every heading outside code blocks, with GitHub's -1, -2 suffixes for repeats."""
    anchors, seen, in_code = [], Counter(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            anchors.append(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return anchors


def test_github_slug_matches_hand_computed_fragments():
    review_world = "The review world: a language whose truth we know"
    assert github_slug(review_world) == "the-review-world-a-language-whose-truth-we-know"
    assert github_slug("PPO on CartPole-v1: the result") == "ppo-on-cartpole-v1-the-result"
    assert github_slug("PPO's objective, term by term") == "ppos-objective-term-by-term"
    assert github_slug("Every headline number: mean ± sd over seeds") == "every-headline-number-mean--sd-over-seeds"
    assert heading_anchors("## Notes\n```\n# not a heading\n```\n### Notes\n") == ["notes", "notes-1"]


def test_every_internal_link_of_the_report_lands():
    text = report.assemble()
    targets = set(heading_anchors(text)) | set(ANCHOR.findall(text))
    broken = sorted({fragment for fragment in LINK.findall(text) if fragment not in targets})
    assert not broken, f"links to anchors that REPORT.md does not have: {broken}"


def test_reference_anchors_are_unique_and_every_reference_is_cited():
    text = report.assemble()
    ids = ANCHOR.findall(text)
    assert [name for name, count in Counter(ids).items() if count > 1] == []
    references = [name for name in ids if name.startswith("ref-")]
    assert len(references) >= 30
    cited = set(LINK.findall(text))
    assert sorted(set(references) - cited) == [], "reference entries that no chapter links to"
