"""Shared fixtures.

``wordpiece_tokenizer``: a tiny BERT-style ``tokenizers.Tokenizer`` (lower-casing
BertNormalizer, BertPreTokenizer, WordPiece, ``[CLS] $A [SEP] $B:1 [SEP]:1``)
built in memory, so data tests need no model files. Its vocabulary is
``WORDPIECE_VOCAB`` (ids in list order: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
[MASK]=4), 102 tokens in all (WORDPIECE_VOCAB_SIZE); any word outside it becomes [UNK].
Function-scoped on purpose: ``build_windows`` sets truncation on the tokenizer it gets.
"""

from __future__ import annotations

import json

import pytest

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDPIECE_WORDS = (
    ". , ? ! ' \" ( ) - "
    "the a an of in on at to and or is was were who what where when which how did do does "
    "army king queen crossed river near old bridge leader norse raiders rollo norman normandy "
    "people gave their name region france descended from pirates denmark iceland norway under agreed "
    "swear fealty charles west francia duke city castle tower cafe zurich built year capital rouen "
    "settled there they it its he she his her by with for as had been long question about many "
    "##s ##ed ##ing ##er"
).split()
WORDPIECE_VOCAB = WORDPIECE_SPECIALS + WORDPIECE_WORDS
WORDPIECE_VOCAB_SIZE = len(WORDPIECE_VOCAB)  # 102


def make_wordpiece_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.processors import TemplateProcessing

    vocab = {tok: i for i, tok in enumerate(WORDPIECE_VOCAB)}
    assert len(vocab) == WORDPIECE_VOCAB_SIZE, "duplicate token in WORDPIECE_VOCAB"
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = BertNormalizer(lowercase=True, strip_accents=None, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = BertPreTokenizer()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok


@pytest.fixture
def wordpiece_tokenizer():
    return make_wordpiece_tokenizer()


PASSAGES = [
    ("Paris is the capital of France. It lies on the river Seine. About two million people live there.",
     [("What is the capital of France?", "Paris"), ("Which river flows through Paris?", "Seine")]),
    ("The cat sat on the red mat in the small kitchen. The dog slept in the garden all day long.",
     [("Where did the cat sit?", "on the red mat"), ("Where did the dog sleep?", "in the garden")]),
    ("Rome was founded in the eighth century. The city became the centre of a large empire.",
     [("When was Rome founded?", "in the eighth century"), ("Who won the cup?", None)]),
]


def squad_payload(copies: int = 1) -> dict:
    paragraphs, n = [], 0
    for _ in range(copies):
        for context, qas in PASSAGES:
            items = []
            for question, answer in qas:
                n += 1
                if answer is None:
                    items.append({"id": f"q{n}", "question": question, "answers": [], "is_impossible": True})
                else:
                    items.append({"id": f"q{n}", "question": question, "is_impossible": False,
                                  "answers": [{"text": answer, "answer_start": context.index(answer)}]})
            paragraphs.append({"context": context, "qas": items})
    return {"version": "v2.0", "data": [{"title": "tiny", "paragraphs": paragraphs}]}


@pytest.fixture
def tiny_squad(tmp_path):
    path = tmp_path / "tiny-squad.json"
    path.write_text(json.dumps(squad_payload(copies=4)))
    return path
