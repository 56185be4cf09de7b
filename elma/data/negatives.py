"""Synthetic unanswerable questions, for training material that has almost none.

SQuAD 2.0's unanswerable questions are written to look answerable: same topic,
a plausible span nearby, but the asked fact is absent. Two cheap recipes give
that signal from answerable questions, and neither looks at dev data:

- ``drop``: remove from the passage every sentence that holds a gold answer;
  the question stays on topic, the fact is gone.
- ``para``: pair the question with the other paragraph of the same article that
  shares most of its words and holds no gold answer text.

Both check that no gold answer text (case-insensitive) is left in the new passage.
"""

from __future__ import annotations

import random
import re
from typing import Dict, Iterable, List, Optional, Sequence

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


def make_negatives(examples: Iterable[Example], rate: float, seed: int) -> List[Example]:
    """One unanswerable twin for a ``rate`` share of the answerable examples, alternating the recipes.

    Args:
        examples: validated examples (any mix of articles).
        rate: probability that an answerable example gets a twin.
        seed: for the choice of examples and recipe.

    Returns:
        The new unanswerable examples (ids ``<qid>-neg-drop`` / ``<qid>-neg-para``).
    """
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
        recipes = ["drop", "para"] if rng.random() < 0.5 else ["para", "drop"]
        for recipe in recipes:  # fall back to the other recipe when one finds nothing
            if recipe == "drop":
                ctx = drop_answer_sentences(ex)
            else:
                ctx = best_other_paragraph(ex, by_title.get(ex.title, []))
            if ctx:
                out.append(Example(f"{ex.qid}-neg-{recipe}", ex.title, ex.question, ctx, (), True))
                break
    return out


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
