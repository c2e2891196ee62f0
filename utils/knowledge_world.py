"""The knowledge world: fictional films whose every fact is known, beside the review world.

A film has a two-word title ("silver harbor"), a director, a lead actor, a genre and a release year, all drawn
from fixed pools with a seed. Films released up to ``cutoff_year`` are the ones a model's training data
"contains"; films released after it are news that no training run saw (the knowledge cut-off). Because the
truth is generated, every answer a model gives can be scored exactly:

* fact sentences ("silver harbor was directed by okafor .") are what a closed-book model reads;
* a fact card ("silver harbor : director okafor , lead mireau , genre thriller , year 2011 .") is what a
  retriever indexes and a reader reads;
* a question ("who directed silver harbor ? director") has one answer word (``answer(film, attribute)``); it
  ends with the name of the field it asks for, like the label on a form, after which the answer is written.

Titles reuse words across films, so a film a model never saw still *looks* familiar: the raw material of a
fluent, confident, wrong answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from utils.config_checks import check, check_int

ADJECTIVES = (
    "silver", "broken", "hidden", "golden", "last", "silent", "crimson", "frozen", "distant", "wild",
    "hollow", "bright", "northern", "iron", "paper", "velvet", "burning", "lonely", "secret", "electric",
)  # fmt: skip
NOUNS = (
    "harbor", "garden", "river", "empire", "mirror", "station", "winter", "orchard", "signal", "city",
    "lantern", "horizon", "island", "tower", "forest", "letter", "machine", "valley", "bridge", "storm",
)  # fmt: skip
DIRECTORS = (
    "okafor", "lindqvist", "moreau", "tanaka", "novak", "haddad", "castillo", "brennan", "kowalski", "achebe",
    "sorensen", "vargas", "ivanova", "mbeki", "delacroix", "yamada", "oconnell", "petrov", "nakamura", "fischer",
)  # fmt: skip
LEADS = (
    "mireau", "santos", "kaur", "whitfield", "adeyemi", "rossi", "larsen", "chen", "dubois", "alvarez",
    "nilsson", "oduya", "marchetti", "kimura", "hale", "barros", "quinn", "varga", "eriksen", "lombard",
)  # fmt: skip
GENRES = ("thriller", "comedy", "drama", "western", "musical", "horror", "romance", "documentary")
ATTRIBUTES = ("director", "lead", "genre", "year")

_FACT = {
    "director": "{title} was directed by {value} .",
    "lead": "{title} stars {value} .",
    "genre": "{title} is a {value} .",
    "year": "{title} was released in {value} .",
}
_QUESTION = {  # each ends with the name of the field asked, the label after which the answer is written
    "director": "who directed {title} ? director",
    "lead": "who stars in {title} ? lead",
    "genre": "what genre is {title} ? genre",
    "year": "when was {title} released ? year",
}
UNKNOWN = "unknown"
"""What a reader says when the card it was given is not about the film asked about."""


@dataclass(frozen=True)
class KnowledgeWorldConfig:
    """How many films, which years, where the cut-off is. Validated on construction."""

    films_before_cutoff: int = 100
    """films released up to the cut-off: what a closed-book model is trained on"""
    films_after_cutoff: int = 40
    """films released after the cut-off: never in any model's training data"""
    first_year: int = 1980
    """earliest release year"""
    cutoff_year: int = 2018
    """the knowledge cut-off: the last year the training data covers"""
    last_year: int = 2024
    """latest release year"""

    def __post_init__(self) -> None:
        check_int(self, "films_before_cutoff", ge=1)
        check_int(self, "films_after_cutoff", ge=1)
        total = self.films_before_cutoff + self.films_after_cutoff
        check(self, "films_after_cutoff", total <= len(ADJECTIVES) * len(NOUNS), "such that there are enough titles")
        check_int(self, "first_year", ge=1900, le=2099)
        check_int(self, "last_year", ge=1900, le=2099)
        check_int(self, "cutoff_year", ge=self.first_year, lt=self.last_year)


@dataclass(frozen=True)
class Film:
    """One film and its facts (every value is one word)."""

    title: str
    director: str
    lead: str
    genre: str
    year: int

    def value(self, attribute: str) -> str:
        if attribute not in ATTRIBUTES:
            raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
        return str(getattr(self, attribute))


def random_film(rng: random.Random, first_year: int, last_year: int, title: str | None = None) -> Film:
    """A film with facts drawn uniformly from the pools (and a random title unless given)."""
    return Film(
        title=title or f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}",
        director=rng.choice(DIRECTORS),
        lead=rng.choice(LEADS),
        genre=rng.choice(GENRES),
        year=rng.randint(first_year, last_year),
    )


def make_world(config: KnowledgeWorldConfig, seed: int) -> tuple[list[Film], list[Film]]:
    """(films up to the cut-off, films after it): distinct titles, facts drawn from the pools with ``seed``."""
    rng = random.Random(seed)
    titles = rng.sample(
        [f"{a} {n}" for a in ADJECTIVES for n in NOUNS], config.films_before_cutoff + config.films_after_cutoff
    )
    before = [random_film(rng, config.first_year, config.cutoff_year, t) for t in titles[: config.films_before_cutoff]]
    after = [
        random_film(rng, config.cutoff_year + 1, config.last_year, t) for t in titles[config.films_before_cutoff :]
    ]
    return before, after


def fact_sentences(film: Film) -> list[str]:
    """One sentence per attribute: what a closed-book model's corpus says about ``film``."""
    return [_FACT[a].format(title=film.title, value=film.value(a)) for a in ATTRIBUTES]


def card(film: Film) -> str:
    """The film's fact card: one retrievable document holding all of its facts."""
    return f"{film.title} : director {film.director} , lead {film.lead} , genre {film.genre} , year {film.year} ."


def question(film: Film, attribute: str) -> str:
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    return _QUESTION[attribute].format(title=film.title)


def answer(film: Film, attribute: str) -> str:
    return film.value(attribute)


def parse_card(text: str) -> Film:
    """The film a card describes (the inverse of :func:`card`); raises ValueError on anything else."""
    words = text.split()
    try:
        colon = words.index(":")
        fields = dict(zip(words[colon + 1 :: 3], words[colon + 2 :: 3]))
        return Film(" ".join(words[:colon]), fields["director"], fields["lead"], fields["genre"], int(fields["year"]))
    except (ValueError, KeyError) as err:
        raise ValueError(f"not a fact card: {text!r}") from err


def with_fact(film: Film, attribute: str, value: str) -> Film:
    """``film`` with one fact changed: what a stale or wrong document says."""
    fields = {a: getattr(film, a) for a in ("title", *ATTRIBUTES)}
    fields[attribute] = int(value) if attribute == "year" else value
    return Film(**fields)


def vocabulary(config: KnowledgeWorldConfig) -> set[str]:
    """Every word the world's sentences, cards, questions and answers can use (all years, seen or not)."""
    words = set(ADJECTIVES) | set(NOUNS) | set(DIRECTORS) | set(LEADS) | set(GENRES) | {UNKNOWN}
    words |= {str(y) for y in range(config.first_year, config.last_year + 1)}
    probe = Film("t t", "d", "l", "g", 0)
    for a in ATTRIBUTES:
        words |= set(question(probe, a).split()) | set(fact_sentences(probe)[ATTRIBUTES.index(a)].split())
    words |= set(card(probe).split())
    return words - {"t", "d", "l", "g", "0"}
