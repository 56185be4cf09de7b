"""Load and validate SQuAD 1.1 / 2.0 JSON files.

The format is the official one: ``{"version": ..., "data": [{"title": ...,
"paragraphs": [{"context": ..., "qas": [{"id", "question", "answers":
[{"text", "answer_start"}], "is_impossible"?}]}]}]}``. SQuAD 1.1 has no
``is_impossible`` key; every question there is answerable.

Validation is strict because a silently wrong label costs hours of training:
every error names the file and the question id, and nothing is returned half-read.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from elma.errors import DataError


@dataclass(frozen=True)
class Answer:
    text: str
    answer_start: int  # character offset into the context


@dataclass(frozen=True)
class Example:
    """One question about one passage."""

    qid: str
    title: str
    question: str
    context: str
    answers: Tuple[Answer, ...]  # empty for an unanswerable question
    is_impossible: bool

    @property
    def answer_texts(self) -> List[str]:
        return [a.text for a in self.answers]


def read_json(path: Path, what: str = "JSON file") -> object:
    """Read a UTF-8 JSON file, turning every failure into a one-line DataError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such {what}") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read {what}: {err.strerror}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 (byte {err.start}); SQuAD files must be UTF-8") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def _require(obj: object, key: str, kind: type, where: str) -> object:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataError(f"{where}: '{key}' must be {kind.__name__} (got {type(value).__name__})")
    return value


def parse_squad(payload: object, source: str = "<data>", check_offsets: bool = True,
                labels: bool = True) -> List[Example]:
    """Turn a parsed SQuAD document into Examples, validating every field.

    Args:
        payload: the parsed JSON document.
        source: file name used in error messages.
        check_offsets: require ``context[answer_start:][:len(text)] == text``.
        labels: require answers (or ``is_impossible``). False accepts unlabelled questions (no ``answers`` key,
            or none and not impossible): they come back with no answers and ``is_impossible`` False.

    Returns:
        The examples in file order.

    Raises:
        DataError: naming the file and the question id of the first problem.
    """
    data = _require(payload, "data", list, f"{source}: top level")
    examples: List[Example] = []
    seen = set()
    for a_idx, article in enumerate(data):
        where = f"{source}: article {a_idx}"
        title = article.get("title", "") if isinstance(article, dict) else ""
        paragraphs = _require(article, "paragraphs", list, where)
        for p_idx, para in enumerate(paragraphs):
            pwhere = f"{where} paragraph {p_idx}"
            context = _require(para, "context", str, pwhere)
            qas = _require(para, "qas", list, pwhere)
            for q_idx, qa in enumerate(qas):
                qid = qa.get("id") if isinstance(qa, dict) else None
                qwhere = f"{source}: question {qid!r}" if qid is not None else f"{pwhere} question {q_idx}"
                qid = _require(qa, "id", str, qwhere)
                if qid in seen:
                    raise DataError(f"{qwhere}: duplicate question id")
                seen.add(qid)
                if not context.strip():
                    raise DataError(f"{qwhere}: empty context")
                question = _require(qa, "question", str, qwhere)
                if not question.strip():
                    raise DataError(f"{qwhere}: empty question")
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{qwhere}: 'is_impossible' must be true or false")
                raw_answers = _require(qa, "answers", list, qwhere) if labels or "answers" in qa else []
                answers = tuple(_parse_answer(ans, context, qwhere, i, check_offsets) for i, ans in enumerate(raw_answers))
                if labels and not impossible and not answers:
                    raise DataError(f"{qwhere}: answerable question with no answers (set is_impossible or add one)")
                if impossible:
                    answers = ()  # plausible_answers are not answers
                examples.append(Example(qid, title, question, context, answers, impossible))
    if not examples:
        raise DataError(f"{source}: no questions in the file")
    return examples


def _parse_answer(ans: object, context: str, where: str, idx: int, check_offsets: bool) -> Answer:
    awhere = f"{where} answer {idx}"
    text = _require(ans, "text", str, awhere)
    start = _require(ans, "answer_start", int, awhere)
    if not text.strip():
        raise DataError(f"{awhere}: empty answer text")
    if start < 0 or start + len(text) > len(context):
        raise DataError(f"{awhere}: answer_start {start} is outside the context ({len(context)} characters)")
    if check_offsets and context[start:start + len(text)] != text:
        found = context[start:start + len(text)]
        raise DataError(f"{awhere}: answer text {text!r} does not occur at answer_start {start} (found {found!r})")
    return Answer(text, start)


def load_squad(path: Path, check_offsets: bool = True, labels: bool = True) -> List[Example]:
    """Load and validate a SQuAD 1.1 or 2.0 file (see parse_squad)."""
    return parse_squad(read_json(path, "SQuAD file"), str(path), check_offsets, labels)


def load_many(paths: Iterable[Path], check_offsets: bool = True) -> List[Example]:
    out: List[Example] = []
    for p in paths:
        out.extend(load_squad(p, check_offsets))
    return out


def group_by_article(examples: Iterable[Example]) -> "dict[str, List[Example]]":
    groups: "dict[str, List[Example]]" = {}
    for ex in examples:
        groups.setdefault(ex.title, []).append(ex)
    return groups


def first_answer(ex: Example) -> Optional[Answer]:
    return ex.answers[0] if ex.answers else None
