"""The knowledge world: films, their facts, cards, questions and answers agree with each other, and the
knowledge cut-off splits the films by release year."""

from __future__ import annotations

import pytest

from utils import knowledge_world as kw
from utils.word_lm import WordTokenizer

CONFIG = kw.KnowledgeWorldConfig()


@pytest.fixture(scope="module")
def films():
    return kw.make_world(CONFIG, seed=0)


def test_world_sizes_titles_and_cutoff(films):
    before, after = films
    assert len(before) == CONFIG.films_before_cutoff and len(after) == CONFIG.films_after_cutoff
    titles = [f.title for f in before + after]
    assert len(set(titles)) == len(titles)  # one film per title
    assert all(CONFIG.first_year <= f.year <= CONFIG.cutoff_year for f in before)
    assert all(CONFIG.cutoff_year < f.year <= CONFIG.last_year for f in after)
    for f in before + after:
        adjective, noun = f.title.split()
        assert adjective in kw.ADJECTIVES and noun in kw.NOUNS
        assert f.director in kw.DIRECTORS and f.lead in kw.LEADS and f.genre in kw.GENRES


def test_world_is_a_function_of_its_seed(films):
    assert kw.make_world(CONFIG, seed=0) == films
    assert kw.make_world(CONFIG, seed=1) != films


def test_facts_cards_questions_and_answers_agree(films):
    for film in films[0] + films[1]:
        assert kw.parse_card(kw.card(film)) == film  # the card holds every fact, and only the film's
        sentences = kw.fact_sentences(film)
        assert len(sentences) == len(kw.ATTRIBUTES)
        for attribute, sentence in zip(kw.ATTRIBUTES, sentences):
            value = kw.answer(film, attribute)
            assert sentence.startswith(film.title + " ") and sentence.split()[-2] == value
            assert film.title in kw.question(film, attribute)
            assert value == str(getattr(kw.parse_card(kw.card(film)), attribute))


def test_hand_written_film():
    film = kw.Film("silver harbor", "okafor", "mireau", "thriller", 2011)
    assert kw.card(film) == "silver harbor : director okafor , lead mireau , genre thriller , year 2011 ."
    assert kw.fact_sentences(film)[0] == "silver harbor was directed by okafor ."
    assert kw.question(film, "year") == "when was silver harbor released ? year"
    assert kw.answer(film, "year") == "2011"
    changed = kw.with_fact(film, "director", "novak")
    assert changed.director == "novak" and kw.with_fact(changed, "director", "okafor") == film
    assert kw.with_fact(film, "year", "2013").year == 2013
    with pytest.raises(ValueError, match="attribute must be one of"):
        kw.question(film, "budget")
    with pytest.raises(ValueError, match="not a fact card"):
        kw.parse_card("silver harbor was directed by okafor .")


def test_vocabulary_covers_every_text_including_years_after_the_cutoff(films):
    tok = WordTokenizer(kw.vocabulary(CONFIG))
    for film in films[0] + films[1]:
        texts = [kw.card(film), *kw.fact_sentences(film), *(kw.question(film, a) for a in kw.ATTRIBUTES)]
        for text in texts:
            assert tok.decode(tok.encode(text)) == text
    assert str(CONFIG.last_year) in tok.ids and kw.UNKNOWN in tok.ids
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("silver harbor was directed by spielberg .")


def test_bad_world_configs_name_the_field():
    with pytest.raises(ValueError, match=r"^KnowledgeWorldConfig\.cutoff_year must be an int in \[1980, 2024\)"):
        kw.KnowledgeWorldConfig(cutoff_year=2024)
    with pytest.raises(ValueError, match=r"^KnowledgeWorldConfig\.films_after_cutoff must be"):
        kw.KnowledgeWorldConfig(films_before_cutoff=390, films_after_cutoff=20)  # 400 titles exist
