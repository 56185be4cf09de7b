"""Synthetic unanswerable questions, for training material that has almost none.

SQuAD 2.0's unanswerable questions are written to look answerable: same topic,
a plausible span nearby, but the asked fact is absent. Rajpurkar et al. (2018,
table 2) sort them into negation, antonym, entity swap, mutual exclusion,
impossible condition and other. Four cheap recipes give that signal from
answerable questions, and none looks at dev data:

- ``drop``: remove from the passage every sentence that holds a gold answer;
  the question stays on topic, the fact is gone.
- ``para``: pair the question with the other paragraph of the same article that
  shares most of its words and holds no gold answer text.
- ``swap`` (entity swap): the passage stays; one name or number of the question
  becomes a name or number of the same kind taken from another paragraph of the
  same article and absent from this passage.
- ``edit`` (antonym, negation): the passage stays; one word of the question
  becomes its antonym, or else "not" goes between a form of "be" and a participle.

``drop``/``para`` check that no gold answer text (case-insensitive) is left in
the new passage; ``swap``/``edit`` only change the question. These labels are
noisy (an edited question may still be answerable), which is why the null
threshold is calibrated on held-out *real* unanswerable questions.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from elma.data.squad import Example

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_WORD = re.compile(r"\w+")
_STOP = frozenset("the a an of in on at to and or is was were are what which who whom when where why how did do does "
                  "for by with from that this as be it its his her their".split())


def sentences(text: str) -> List[tuple]:
    """(start, end) character spans of the sentences of ``text``."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [s for s in spans if text[s[0]:s[1]].strip()]


def _holds_answer(text: str, ex: Example) -> bool:
    low = text.lower()
    return any(a.text.strip().lower() in low for a in ex.answers)


def drop_answer_sentences(ex: Example) -> Optional[str]:
    """The passage without the sentences that hold a gold answer, or None if nothing sensible is left."""
    spans = sentences(ex.context)
    keep = [(s, e) for s, e in spans
            if not any(s < a.answer_start + len(a.text) and a.answer_start < e for a in ex.answers)]
    if len(keep) < 2 or len(keep) == len(spans):
        return None
    text = " ".join(ex.context[s:e].strip() for s, e in keep)
    return None if _holds_answer(text, ex) else text


def _words(text: str) -> set:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def best_other_paragraph(ex: Example, paragraphs: Sequence[str]) -> Optional[str]:
    """The paragraph of the same article that shares most question words and holds no gold answer."""
    q = _words(ex.question)
    best, best_overlap = None, 0
    for para in paragraphs:
        if para == ex.context or _holds_answer(para, ex):
            continue
        overlap = len(q & _words(para))
        if overlap > best_overlap:
            best, best_overlap = para, overlap
    return best


# A name: capitalised words (joined by "of"/"the"/"de"...); a number: digits, maybe with , or .
_NAME = re.compile(r"\b[A-Z][\w-]*(?:\s+(?:(?:of|the|de|von|van|and)\s+)?[A-Z][\w-]*)*")
_NUMBER = re.compile(r"\b\d[\d,.]*\b")
# "not" goes between a form of "be" and a participle: "was founded" -> "was not founded"
_PASSIVE = re.compile(r"\b(is|was|are|were|been)\s+(?=\w+(?:ed|en|wn|ght|un)\b)")
_ANTONYM_PAIRS = (
    ("first", "last"), ("largest", "smallest"), ("biggest", "smallest"), ("highest", "lowest"),
    ("most", "least"), ("before", "after"), ("earliest", "latest"), ("oldest", "youngest"),
    ("older", "younger"), ("increase", "decrease"), ("increased", "decreased"), ("north", "south"),
    ("east", "west"), ("northern", "southern"), ("eastern", "western"), ("maximum", "minimum"),
    ("won", "lost"), ("win", "lose"), ("start", "end"), ("began", "ended"), ("begin", "end"),
    ("longest", "shortest"), ("long", "short"), ("more", "less"), ("major", "minor"),
    ("positive", "negative"), ("success", "failure"), ("successful", "unsuccessful"), ("best", "worst"),
    ("higher", "lower"), ("larger", "smaller"), ("early", "late"), ("inside", "outside"),
    ("public", "private"), ("ancient", "modern"), ("rich", "poor"), ("allowed", "forbidden"),
    ("accepted", "rejected"), ("same", "different"), ("top", "bottom"), ("above", "below"),
)
_ANTONYMS = {**dict(_ANTONYM_PAIRS), **{b: a for a, b in _ANTONYM_PAIRS}}
_WH = frozenset("What Which Who Whom Whose When Where Why How In On At Of For By To From The A An".split())
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\s[\"'(])$")


@functools.lru_cache(maxsize=4096)  # every question of an article scans the same paragraphs
def _names_and_numbers(text: str) -> Tuple[str, ...]:
    """Names not at a sentence start (there any word is capitalised) and numbers of ``text``."""
    names = [m.group(0) for m in _NAME.finditer(text)
             if m.group(0) not in _WH and len(m.group(0)) > 2 and not _SENTENCE_START.search(text[:m.start()])]
    return tuple(names + _NUMBER.findall(text))


def _kind(term: str) -> str:
    if term[0].isdigit():
        if re.fullmatch(r"1\d{3}|20\d{2}", term):
            return "year"
        return f"number{min(len(re.sub(r'[^0-9]', '', term.split('.')[0])), 4)}"  # by digit count
    return "name"


def swap_entity(ex: Example, paragraphs: Sequence[str], rng: random.Random) -> Optional[str]:
    """The question with one name or number swapped for one of the same kind from another paragraph.

    The new term must not occur in this passage, so the passage cannot hold what is asked.
    """
    in_question = [t for t in _names_and_numbers(ex.question) if ex.question.find(t) > 0]
    if not in_question:
        return None
    low_ctx, low_question = ex.context.lower(), ex.question.lower()
    pool: Dict[str, List[str]] = {}
    for para in paragraphs:
        if para == ex.context:
            continue
        for term in _names_and_numbers(para):
            if term.lower() not in low_ctx and term.lower() not in low_question:
                pool.setdefault(_kind(term), []).append(term)
    rng.shuffle(in_question)
    for old in in_question:
        candidates = sorted(set(pool.get(_kind(old), [])))
        if candidates:
            new = rng.choice(candidates)
            return ex.question.replace(old, new, 1)
    return None


def edit_question(ex: Example) -> Optional[str]:
    """The question with its first antonym-listed word flipped, else negated ("was founded" -> "was not founded")."""
    for m in re.finditer(r"\b\w+\b", ex.question):
        word = m.group(0)
        flip = _ANTONYMS.get(word.lower())
        if flip:
            flip = flip.capitalize() if word[0].isupper() else flip
            return ex.question[:m.start()] + flip + ex.question[m.end():]
    m = _PASSIVE.search(ex.question)
    if m:
        return ex.question[:m.end(1)] + " not" + ex.question[m.end(1):]
    return None


RECIPES = ("drop", "para", "swap", "edit")


def make_negatives(examples: Iterable[Example], rate: float, seed: int,
                   recipes: Sequence[str] = ("drop", "para")) -> List[Example]:
    """One unanswerable twin for a ``rate`` share of the answerable examples, the recipe drawn at random.

    Args:
        examples: validated examples (any mix of articles).
        rate: probability that an answerable example gets a twin.
        seed: for the choice of examples and recipe.
        recipes: which of ``RECIPES`` to draw from (uniformly; when one finds nothing the next is tried).

    Returns:
        The new unanswerable examples (ids ``<qid>-neg-<recipe>``).
    """
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown or not recipes:
        raise ValueError(f"negative recipes must be some of {', '.join(RECIPES)} (got {', '.join(recipes) or 'none'})")
    rng = random.Random(seed)
    examples = list(examples)
    by_title: Dict[str, List[str]] = {}
    for ex in examples:
        paras = by_title.setdefault(ex.title, [])
        if ex.context not in paras:
            paras.append(ex.context)
    out: List[Example] = []
    for ex in examples:
        if ex.is_impossible or rng.random() >= rate:
            continue
        order = list(recipes)
        rng.shuffle(order)
        for recipe in order:  # fall back to the next recipe when one finds nothing
            question, ctx = ex.question, ex.context
            if recipe == "drop":
                ctx = drop_answer_sentences(ex)
            elif recipe == "para":
                ctx = best_other_paragraph(ex, by_title.get(ex.title, []))
            elif recipe == "swap":
                question = swap_entity(ex, by_title.get(ex.title, []), rng)
            else:
                question = edit_question(ex)
            if ctx and question:
                out.append(Example(f"{ex.qid}-neg-{recipe}", ex.title, question, ctx, (), True))
                break
    return out


def repeat_real_negatives(examples: Iterable[Example], times: int) -> List[Example]:
    """``times - 1`` extra copies (ids ``<qid>-rep<k>``) of every real unanswerable example."""
    if times < 1:
        raise ValueError(f"real-negative repeat count must be >= 1 (got {times})")
    return [replace(ex, qid=f"{ex.qid}-rep{k}") for ex in examples if ex.is_impossible for k in range(1, times)]


def to_squad_json(examples: Iterable[Example], version: str = "v2.0") -> dict:
    """Examples back into the official nested format (one paragraph entry per distinct context)."""
    articles: Dict[str, Dict[str, list]] = {}
    for ex in examples:
        paras = articles.setdefault(ex.title, {})
        paras.setdefault(ex.context, []).append({
            "id": ex.qid,
            "question": ex.question,
            "answers": [{"text": a.text, "answer_start": a.answer_start} for a in ex.answers],
            "is_impossible": ex.is_impossible,
        })
    return {"version": version, "data": [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]}
        for title, paras in articles.items()
    ]}
