"""``elma prepare-data``: one training file and one held-out file from several SQuAD files.

Articles are the unit of every split (questions of one article never sit on
both sides). An article that occurs in several files (the same title) is taken
from the first file only. The training side gets synthetic unanswerable twins
(``elma.data.negatives``) on top of any real ones, which may be repeated; the
held-out side gets twins at its own rate (0 keeps it all real, the right
material for calibrating the null threshold when it holds real unanswerables).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from elma.data.negatives import make_negatives, repeat_real_negatives, to_squad_json
from elma.data.squad import Example, group_by_article, load_squad
from elma.errors import DataError
from elma.fsutil import staged_dir, write_json

logger = logging.getLogger(__name__)
SPLIT_JSON = "split.json"  # the statistics file: marks a folder as an earlier prepare-data output


@dataclass(frozen=True)
class SplitStats:
    train_questions: int
    train_unanswerable: int
    heldout_questions: int
    heldout_unanswerable: int
    heldout_titles: List[str]


def prepare(train_files: Sequence[Path], out_dir: Path, holdout_from: Optional[Path] = None,
            holdout_articles: int = 0, negative_rate: float = 0.5, seed: int = 13,
            holdout_titles: Sequence[str] = (), heldout_negative_rate: Optional[float] = None,
            recipes: Sequence[str] = ("drop", "para"), repeat_real: int = 1, overwrite: bool = False) -> SplitStats:
    """Write ``out_dir/train.json``, ``out_dir/heldout.json`` and ``out_dir/split.json``, as one folder
    renamed into place when complete (an earlier one is replaced only with ``overwrite``).

    Args:
        train_files: SQuAD files, first file wins for a title found twice.
        holdout_from: the file whose articles may be held out (default: the first train file).
        holdout_articles: how many of its articles, drawn with ``seed``, go to the held-out side.
        negative_rate: share of answerable training questions that get an unanswerable twin.
        holdout_titles: articles held out by title (on top of the drawn ones).
        heldout_negative_rate: the same share on the held-out side (default: ``negative_rate``).
        recipes: synthetic-negative recipes (``elma.data.negatives.RECIPES``).
        repeat_real: each real unanswerable training question appears this many times.
    """
    heldout_rate = negative_rate if heldout_negative_rate is None else heldout_negative_rate
    for name, rate in (("negative_rate", negative_rate), ("heldout_negative_rate", heldout_rate)):
        if not 0 <= rate <= 1:
            raise ValueError(f"{name} must be in [0, 1] (got {rate})")
    articles = {}
    source_of = {}
    for path in train_files:
        for title, exs in group_by_article(load_squad(Path(path))).items():
            if title not in articles:
                articles[title] = exs
                source_of[title] = Path(path)
    source = Path(holdout_from or train_files[0])
    pool = sorted(t for t, src in source_of.items() if src == source)
    if holdout_articles > len(set(pool) - set(holdout_titles)):
        raise DataError(f"{source}: has {len(pool)} articles, cannot hold out {holdout_articles}")
    missing = sorted(set(holdout_titles) - set(articles))
    if missing:
        raise DataError(f"--holdout-title {missing[0]!r}: no such article in the input files")
    held = set(holdout_titles)
    held |= set(random.Random(seed).sample([t for t in pool if t not in held], holdout_articles))
    train: List[Example] = [ex for t, exs in articles.items() if t not in held for ex in exs]
    heldout: List[Example] = [ex for t, exs in articles.items() if t in held for ex in exs]
    synthetic = make_negatives(train, negative_rate, seed, recipes)
    train += repeat_real_negatives(train, repeat_real) + synthetic
    heldout += make_negatives(heldout, heldout_rate, seed + 1, recipes)
    stats = SplitStats(len(train), sum(e.is_impossible for e in train), len(heldout),
                       sum(e.is_impossible for e in heldout), sorted(held))
    with staged_dir(Path(out_dir), overwrite) as tmp:
        write_json(tmp / "train.json", to_squad_json(train))
        if heldout:
            write_json(tmp / "heldout.json", to_squad_json(heldout))
        write_json(tmp / SPLIT_JSON, stats.__dict__)
    return stats
