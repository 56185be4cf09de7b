"""Synthetic unanswerable questions and the train/held-out split: no twin ever
keeps a gold answer, nothing of one article lands on both sides."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from elma.data.negatives import (
    best_other_paragraph,
    drop_answer_sentences,
    edit_question,
    make_negatives,
    repeat_real_negatives,
    sentences,
    swap_entity,
    to_squad_json,
)
from elma.data.prepare import prepare
from elma.data.squad import Answer, Example, load_squad, parse_squad
from elma.errors import DataError

NORMANDY = ("Rollo led the Norse raiders. They settled in Normandy in 911. "
            "The duchy grew rich. Its capital was Rouen.")


def ex_for(context: str, answer: str, question: str = "Where did the raiders settle?", qid: str = "q1",
           title: str = "Normans", start: "int | None" = None) -> Example:
    start = context.index(answer) if start is None else start
    return Example(qid, title, question, context, (Answer(answer, start),), False)


def holds_gold(text: str, ex: Example) -> bool:
    return any(a.text.lower() in text.lower() for a in ex.answers)


# --------------------------------------------------------------------------- #
# drop
# --------------------------------------------------------------------------- #
def test_sentences_split_at_sentence_ends():
    assert [NORMANDY[s:e] for s, e in sentences(NORMANDY)] == [
        "Rollo led the Norse raiders.", "They settled in Normandy in 911.", "The duchy grew rich.",
        "Its capital was Rouen."]


def test_drop_removes_the_answer_sentence():
    out = drop_answer_sentences(ex_for(NORMANDY, "Normandy"))
    assert out == "Rollo led the Norse raiders. The duchy grew rich. Its capital was Rouen."
    assert "normandy" not in out.lower()


def test_drop_removes_every_sentence_holding_a_gold_answer():
    ctx = "Rollo led the raiders. They settled in Normandy. The duchy grew rich. Its capital was Rouen. It had ports."
    answers = (Answer("Normandy", ctx.index("Normandy")), Answer("Rouen", ctx.index("Rouen")))
    ex = Example("q", "N", "Where?", ctx, answers, False)
    out = drop_answer_sentences(ex)
    assert out == "Rollo led the raiders. The duchy grew rich. It had ports."
    assert not holds_gold(out, ex)


def test_drop_gives_up_when_the_answer_text_is_also_elsewhere():
    ctx = "They settled in Normandy. The duchy grew rich. NORMANDY had many ports. Its capital was Rouen."
    assert drop_answer_sentences(ex_for(ctx, "Normandy")) is None


def test_drop_gives_up_when_too_little_is_left():
    assert drop_answer_sentences(ex_for("They settled in Normandy. The duchy grew rich.", "Normandy")) is None
    assert drop_answer_sentences(ex_for("They settled in Normandy in the year 911.", "Normandy")) is None


def test_drop_removes_all_sentences_an_answer_spans():
    ctx = "Rollo led the raiders. They settled in Normandy. The duchy grew rich. Its capital was Rouen. It had ports."
    answer = "Normandy. The duchy"
    out = drop_answer_sentences(ex_for(ctx, answer))
    assert out == "Rollo led the raiders. Its capital was Rouen. It had ports."


# --------------------------------------------------------------------------- #
# para
# --------------------------------------------------------------------------- #
OWN = "The raiders settled in Normandy after the siege of Paris."
WITH_ANSWER = "Raiders from Denmark settled in NORMANDY; the raiders were Norse."
BEST = "The Norse raiders settled many coasts and raiders came often."
WEAK = "Raiders were feared."
UNRELATED = "The price of wool rose in the market."


def test_para_picks_most_overlapping_paragraph_without_the_answer():
    ex = ex_for(OWN, "Normandy", question="Where did the Norse raiders settle?")
    # WITH_ANSWER overlaps as much but holds the answer (in capitals): never chosen
    assert best_other_paragraph(ex, [OWN, WITH_ANSWER, WEAK, BEST, UNRELATED]) == BEST
    assert best_other_paragraph(ex, [OWN, WEAK, UNRELATED]) == WEAK


def test_para_finds_nothing_without_shared_content_words():
    ex = ex_for(OWN, "Normandy", question="Where did the Norse raiders settle?")
    assert best_other_paragraph(ex, [OWN, UNRELATED, "Where was it? What did they do?"]) is None
    assert best_other_paragraph(ex, [OWN, WITH_ANSWER]) is None


# --------------------------------------------------------------------------- #
# make_negatives
# --------------------------------------------------------------------------- #
NAMES = ["Hugo", "Bruno", "Odo", "Lothar"]


def article(title: str, n_paras: int = 3, first_qid: int = 0) -> list:
    """Examples of one article: one answerable question per paragraph, plus one real unanswerable."""
    exs = []
    for j in range(n_paras):
        name = NAMES[j]
        ctx = (f"The port of {title} was busy. Admiral {name} commanded the fleet of {title}. "
               f"Ships carried wool and wine. Storms often struck the coast of {title}.")
        exs.append(ex_for(ctx, name, question=f"Who commanded the fleet of {title}?",
                          qid=f"{title}-{first_qid + j}", title=title))
    exs.append(Example(f"{title}-imp", title, f"Who burned the fleet of {title}?", exs[0].context, (), True))
    return exs


EXAMPLES = article("Caen") + article("Bayeux") + article("Lisieux", first_qid=10)


def test_negatives_are_unanswerable_twins_without_gold_text():
    by_id = {e.qid: e for e in EXAMPLES}
    out = make_negatives(EXAMPLES, rate=1.0, seed=0)
    answerable = [e for e in EXAMPLES if not e.is_impossible]
    assert len(out) == len(answerable)  # rate 1: every answerable example gets one twin here
    recipes = set()
    for neg in out:
        qid, _, recipe = neg.qid.rpartition("-neg-")
        recipes.add(recipe)
        src = by_id[qid]
        assert not src.is_impossible
        assert neg.is_impossible and neg.answers == ()
        assert (neg.title, neg.question) == (src.title, src.question)
        assert neg.context != src.context
        assert not holds_gold(neg.context, src)
        same_article = {e.context for e in EXAMPLES if e.title == src.title}
        if recipe == "para":
            assert neg.context in same_article
        else:
            assert recipe == "drop"
            kept = [neg.context[s:e] for s, e in sentences(neg.context)]
            assert set(kept) < {src.context[s:e] for s, e in sentences(src.context)}
    assert recipes == {"drop", "para"}
    assert len({n.qid for n in out}) == len(out)


@pytest.mark.parametrize("seed", [0, 1, 13])
def test_negatives_are_deterministic_per_seed(seed):
    first = make_negatives(EXAMPLES, rate=0.5, seed=seed)
    assert make_negatives(list(EXAMPLES), rate=0.5, seed=seed) == first
    assert all(n.is_impossible and n.answers == () for n in first)
    for n in first:
        src = next(e for e in EXAMPLES if e.qid == n.qid.rpartition("-neg-")[0])
        assert not holds_gold(n.context, src)


def test_negative_rate_zero_gives_none():
    assert make_negatives(EXAMPLES, rate=0.0, seed=3) == []


def test_real_unanswerable_examples_get_no_twin():
    out = make_negatives([e for e in EXAMPLES if e.is_impossible], rate=1.0, seed=0)
    assert out == []


# --------------------------------------------------------------------------- #
# swap / edit: the passage stays, the question changes
# --------------------------------------------------------------------------- #
FLEET = ["Admiral Hugo led the fleet of Caen in 1066. It had 40 ships.",
         "In 1120 Admiral Bruno rebuilt the port of Caen. Storms hit it.",
         "The fleet sailed to Dover with 35 ships."]


def test_swap_puts_in_a_name_of_the_article_that_the_passage_lacks():
    ex = ex_for(FLEET[0], "1066", question="When did Admiral Hugo lead the fleet?")
    for seed in range(5):
        q = swap_entity(ex, FLEET, random.Random(seed))
        assert q is not None and q != ex.question
        new = q.replace("When did ", "").replace(" lead the fleet?", "")
        assert new in ("Admiral Bruno", "Dover") and new not in ex.context
    # a capitalised word at a sentence start ("Storms") is no name
    assert {swap_entity(ex, FLEET, random.Random(s)) for s in range(20)} == {
        "When did Admiral Bruno lead the fleet?", "When did Dover lead the fleet?"}


def test_swap_keeps_the_kind_of_a_number():
    ex = ex_for(FLEET[0], "40", question="How many ships sailed in 1066?")
    q = swap_entity(ex, FLEET, random.Random(0))
    assert q == "How many ships sailed in 1120?"  # a year becomes a year, never 35
    assert swap_entity(ex_for(FLEET[0], "40", question="How many ships?"), FLEET, random.Random(0)) is None


@pytest.mark.parametrize("question, edited", [
    ("Who built the first ship?", "Who built the last ship?"),
    ("What is the Largest port?", "What is the Smallest port?"),
    ("Which port was founded by Rollo?", "Which port was not founded by Rollo?"),
    ("Where did the fleet sail?", None),  # no antonym, no "be + participle": left alone
])
def test_edit_flips_an_antonym_or_negates_a_passive(question, edited):
    assert edit_question(ex_for(NORMANDY, "Normandy", question=question)) == edited


def test_question_recipes_keep_the_passage_and_change_the_question():
    fleet = [ex_for(FLEET[0], "Hugo", question="Who led the fleet of Caen in 1066?", qid="f0"),
             ex_for(FLEET[1], "Bruno", question="Who rebuilt the port in 1120?", qid="f1"),
             ex_for(FLEET[2], "Dover", question="Where did the fleet sail with 35 ships?", qid="f2")]
    out = make_negatives(fleet, rate=1.0, seed=0, recipes=("swap",))
    assert len(out) == 3, "every question has a name or number that another paragraph can replace"
    by_id = {e.qid: e for e in fleet}
    for neg in out:
        src = by_id[neg.qid.rpartition("-neg-")[0]]
        assert neg.qid.endswith("-neg-swap") and neg.is_impossible and neg.answers == ()
        assert neg.context == src.context and neg.question != src.question


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="drop, para, swap, edit"):
        make_negatives(EXAMPLES, rate=1.0, seed=0, recipes=("drop", "shuffle"))


def test_repeat_real_negatives_copies_only_real_unanswerables():
    extra = repeat_real_negatives(EXAMPLES, 3)
    real = [e for e in EXAMPLES if e.is_impossible]
    assert len(extra) == 2 * len(real)
    assert {e.qid for e in extra} == {f"{e.qid}-rep{k}" for e in real for k in (1, 2)}
    assert repeat_real_negatives(EXAMPLES, 1) == []
    with pytest.raises(ValueError, match=">= 1"):
        repeat_real_negatives(EXAMPLES, 0)


def test_squad_json_round_trip():
    negs = make_negatives(EXAMPLES, rate=1.0, seed=0)
    doc = json.loads(json.dumps(to_squad_json(EXAMPLES + negs)))
    by_qid = sorted(EXAMPLES + negs, key=lambda e: e.qid)
    assert sorted(parse_squad(doc, "round-trip"), key=lambda e: e.qid) == by_qid


# --------------------------------------------------------------------------- #
# prepare
# --------------------------------------------------------------------------- #
def write_squad(path: Path, examples) -> Path:
    path.write_text(json.dumps(to_squad_json(examples)), encoding="utf-8")
    return path


@pytest.fixture
def two_files(tmp_path):
    """first.json: 4 articles; second.json: a different 'Caen' (duplicate title) and 'Falaise'."""
    first = [e for t in ("Caen", "Bayeux", "Lisieux", "Evreux") for e in article(t)]
    caen2 = [Example(f"other-{e.qid}", e.title, e.question, e.context.replace("busy", "calm"), e.answers,
                     e.is_impossible) for e in article("Caen")]
    second = caen2 + article("Falaise")
    return (write_squad(tmp_path / "first.json", first), write_squad(tmp_path / "second.json", second),
            first, second)


def test_prepare_splits_by_article_and_first_file_wins(tmp_path, two_files):
    f1, f2, first, second = two_files
    out = tmp_path / "out"
    stats = prepare([f1, f2], out, holdout_articles=2, negative_rate=0.5, seed=13)
    train = load_squad(out / "train.json")
    held = load_squad(out / "heldout.json")
    train_titles, held_titles = {e.title for e in train}, {e.title for e in held}

    assert not train_titles & held_titles
    assert held_titles == set(stats.heldout_titles) and len(held_titles) == 2
    assert held_titles <= {"Caen", "Bayeux", "Lisieux", "Evreux"}  # held out from the first file only
    assert "Falaise" in train_titles
    assert train_titles | held_titles == {"Caen", "Bayeux", "Lisieux", "Evreux", "Falaise"}

    # duplicated title: every Caen question and context comes from the first file
    originals = [e for e in train + held if "-neg-" not in e.qid]
    assert not any(e.qid.startswith("other-") for e in train + held)
    assert sorted(e.qid for e in originals) == sorted([e.qid for e in first] +
                                                      [e.qid for e in second if e.title == "Falaise"])
    first_caen = {e.context for e in first if e.title == "Caen"}
    assert {e.context for e in train + held if e.title == "Caen" and "-neg-" not in e.qid} <= first_caen
    assert not any("calm" in e.context for e in train + held)

    # the counts reported are the files' contents
    assert (stats.train_questions, stats.train_unanswerable) == (len(train), sum(e.is_impossible for e in train))
    assert (stats.heldout_questions, stats.heldout_unanswerable) == (len(held), sum(e.is_impossible for e in held))
    assert stats.train_unanswerable > sum(e.is_impossible for e in originals if e.title in train_titles)
    split = json.loads((out / "split.json").read_text())
    assert split["heldout_titles"] == sorted(held_titles)


def test_prepare_holds_out_a_named_article_all_real(tmp_path, two_files):
    f1, f2, first, _ = two_files
    out = tmp_path / "out"
    stats = prepare([f1, f2], out, holdout_titles=["Bayeux"], heldout_negative_rate=0.0, negative_rate=1.0,
                    recipes=("drop", "para", "swap", "edit"), repeat_real=2, seed=0)
    held = load_squad(out / "heldout.json")
    assert stats.heldout_titles == ["Bayeux"]
    assert sorted(e.qid for e in held) == sorted(e.qid for e in first if e.title == "Bayeux")  # no twins
    train = load_squad(out / "train.json")
    assert sum(e.qid.endswith("-rep1") for e in train) == 4  # Caen, Lisieux, Evreux, Falaise: one real each
    with pytest.raises(DataError, match="Rouen"):
        prepare([f1, f2], tmp_path / "bad", holdout_titles=["Rouen"])
    assert not (tmp_path / "bad").exists()


def test_prepare_is_deterministic_per_seed(tmp_path, two_files):
    f1, f2, _, _ = two_files
    prepare([f1, f2], tmp_path / "a", holdout_articles=1, seed=5)
    prepare([f1, f2], tmp_path / "b", holdout_articles=1, seed=5)
    for name in ("train.json", "heldout.json", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepare_holdout_from_another_file(tmp_path, two_files):
    f1, f2, _, _ = two_files
    stats = prepare([f1, f2], tmp_path / "out", holdout_from=f2, holdout_articles=1, seed=0)
    # Caen of second.json lost to first.json, so only Falaise can be held out
    assert stats.heldout_titles == ["Falaise"]


@pytest.mark.parametrize("holdout_from, n", [(None, 5), ("second", 2)])
def test_prepare_rejects_holding_out_more_articles_than_exist(tmp_path, two_files, holdout_from, n):
    f1, f2, _, _ = two_files
    source = f2 if holdout_from == "second" else None
    with pytest.raises(DataError, match="cannot hold out") as info:
        prepare([f1, f2], tmp_path / "out", holdout_from=source, holdout_articles=n)
    assert str(source or f1) in str(info.value)
    assert not (tmp_path / "out" / "train.json").exists()


def test_prepare_rejects_bad_negative_rate(tmp_path, two_files):
    f1, _, _, _ = two_files
    with pytest.raises(ValueError, match="negative_rate"):
        prepare([f1], tmp_path / "out", negative_rate=1.5)


def test_prepare_reports_a_bad_input_file(tmp_path, two_files):
    f1, _, _, _ = two_files
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(DataError, match="bad.json"):
        prepare([f1, bad], tmp_path / "out")
