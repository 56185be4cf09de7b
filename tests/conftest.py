"""Shared fixtures.

``wordpiece_tokenizer``: a tiny BERT-style ``tokenizers.Tokenizer`` (lower-casing
BertNormalizer, BertPreTokenizer, WordPiece, ``[CLS] $A [SEP] $B:1 [SEP]:1``)
built in memory, so data tests need no model files. Its vocabulary is
``WORDPIECE_VOCAB`` (ids in list order: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
[MASK]=4), 102 tokens in all (WORDPIECE_VOCAB_SIZE); any word outside it becomes [UNK].
Function-scoped on purpose: ``build_windows`` sets truncation on the tokenizer it gets.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

TINY_BERT = Path(__file__).resolve().parent / "fixtures" / "tiny-bert.json"  # a 3-layer BERT config, random weights
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


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Keep the ELMA cache (cached bundles, file-hash memos) of the tests, subprocesses and module fixtures
    included, out of ~/.cache (session scope: set before any other fixture runs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ELMA_CACHE_DIR", str(tmp_path_factory.mktemp("elma-cache")))
        yield


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


# ---- tiny model folders and bundles (export and runtime tests) ------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tiny_config(name: str, **overrides) -> dict:
    """tests/fixtures/tiny-{name}.json with ``overrides`` applied."""
    cfg = json.loads((FIXTURES / f"tiny-{name}.json").read_text())
    cfg.update(overrides)
    return cfg


def make_tiny_model_dir(path: Path, name: str, seed: int = 0, **overrides) -> Path:
    """Save a random tiny ELMA model folder (weights, config, WordPiece tokenizer) at ``path``.

    Every weight is perturbed, as training would leave it (random init has equal LayerNorm weights and
    zero biases, which exporters share between nodes), and the exit heads are scaled up so that logits
    are O(1) and tolerances mean something. Windows of 64 tokens; one null threshold per exit.
    """
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig

    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than the work on a busy 2-core machine

    from elma.model.multi_exit import ExitConfig, MultiExitQA

    cfg = tiny_config(name, **overrides)
    kind = cfg.pop("model_type")
    encoder_config = AutoConfig.for_model(kind, **cfg)
    layers = encoder_config.num_hidden_layers  # DistilBERT names it n_layers
    torch.manual_seed(seed)
    exit_config = ExitConfig(layers, null_thresholds=tuple(0.25 * i - 0.5 for i in range(layers)), max_seq_length=64,
                             doc_stride=16, max_query_length=16)
    model = MultiExitQA(encoder_config, exit_config)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for head in model.exits:
            head.weight.normal_(std=0.5)
            head.bias.normal_(std=0.1)
    model.save_pretrained(path)
    make_wordpiece_tokenizer().save(str(Path(path) / "tokenizer.json"))
    return Path(path)


class TinyBundles:
    """Exports each (model, precision) once per test session; tests that alter a bundle copy it first."""

    def __init__(self, root: Path):
        self.root = root
        self._models: dict = {}
        self._bundles: dict = {}

    def model(self, name: str = "bert", **overrides) -> Path:
        key = (name, tuple(sorted(overrides.items())))
        if key not in self._models:
            suffix = "-".join(f"{k}{v}" for k, v in key[1])
            self._models[key] = make_tiny_model_dir(self.root / f"model-{name}{suffix}", name, **overrides)
        return self._models[key]

    def bundle(self, name: str = "bert", precision: str = "fp32", **overrides) -> Path:
        pytest.importorskip("onnxruntime")
        from elma.export.bundle_writer import export_bundle
        from elma.export.specs import ExportConfig

        key = (name, precision, tuple(sorted(overrides.items())))
        if key not in self._bundles:
            model = self.model(name, **overrides)
            out = self.root / f"bundle-{model.name[len('model-'):]}-{precision}"
            export_bundle(model, out, ExportConfig(precision=precision, threads=1))
            self._bundles[key] = out
        return self._bundles[key]


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
    return TinyBundles(tmp_path_factory.mktemp("bundles"))


class PipedStdin(io.StringIO):
    """Standard input that is not a terminal (text piped in), for the console scripts' ``main(argv, stdin, out)``."""

    def isatty(self):
        return False


@contextlib.contextmanager
def loopback_offload_server(bundle: str, db_path: Path, token: str, wrap=None):
    """The real offload app on a loopback port: one device token, a SQLite record store, the bundle answering at
    full depth. ``wrap(answerer)`` may return the callable the app answers with (to watch what it is asked).

    Yields ``(server, store, answerer)``; closes all three on exit.
    """
    from elma.offload.server import BackgroundServer, RecordStore, RuntimeAnswerer, ServeConfig, create_app, hash_token
    from elma.runtime.engine import Runtime

    store = RecordStore(f"sqlite:///{db_path}")
    answerer = RuntimeAnswerer(Runtime.open(bundle, policy="none"))
    try:
        app = create_app(ServeConfig(rate_per_s=1000, burst=1000), wrap(answerer) if wrap else answerer, store,
                         {hash_token(token): "jetson-01"})
        with BackgroundServer(app) as srv:
            yield srv, store, answerer
    finally:
        answerer.close()
        store.close()


@pytest.fixture
def tiny_train_config(tmp_path, tiny_squad, wordpiece_tokenizer):
    """``tiny_train_config(**overrides)``: the ``TrainConfig`` of a few steps on the tiny BERT and ``tiny_squad``
    that the training tests share (windows of 48 tokens, batches of 4, one thread); each test module sets its steps."""
    from elma.train.trainer import TrainConfig

    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))

    def make(**overrides):
        settings = dict(model=str(TINY_BERT), tokenizer=str(tok), train_files=(str(tiny_squad),),
                        output_dir=str(tmp_path / "run"),
                        max_seq_length=48, doc_stride=8, max_query_length=12, batch_size=4, learning_rate=3e-3, seed=0,
                        threads=1)
        settings.update(overrides)
        return TrainConfig(**settings)
    return make
