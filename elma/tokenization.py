"""Tokenizers for ELMA models: always a ``tokenizers.Tokenizer`` at run time.

A model folder ships ``tokenizer.json`` (the fast-tokenizer format), which the
``tokenizers`` package loads with no torch or transformers, on a Jetson too.
An ALBERT SentencePiece model (``spiece.model``) is converted to that format
once, at training or export time, which needs transformers and sentencepiece.
"""

from __future__ import annotations

from pathlib import Path

from elma.errors import ModelLoadError

TOKENIZER_NAME = "tokenizer.json"


def load_tokenizer(path: "str | Path"):
    """Load a tokenizer from a model folder, a ``tokenizer.json`` or a SentencePiece ``.model`` file."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        if (path / TOKENIZER_NAME).is_file():
            path = path / TOKENIZER_NAME
        elif (path / "spiece.model").is_file():
            path = path / "spiece.model"
        else:
            raise ModelLoadError(f"{path}: no {TOKENIZER_NAME} or spiece.model in this folder")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such tokenizer file")
    if path.suffix == ".model":
        return _from_sentencepiece(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on a malformed file
        raise ModelLoadError(f"{path}: not a valid tokenizer.json: {err}") from err


def _from_sentencepiece(path: Path):
    """Convert an ALBERT SentencePiece model into a fast tokenizer (lower-casing, [CLS]/[SEP] template)."""
    try:
        import sentencepiece
        import transformers
        from transformers import AlbertTokenizerFast
    except ImportError as err:
        raise ModelLoadError(f"{path}: converting a SentencePiece model needs transformers and sentencepiece "
                             f"(pip install 'elma[train]')") from err
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 ignores ``vocab_file`` here and silently builds a 5-token vocabulary (every word <unk>):
        # hand it the pieces and the normaliser's charsmap instead (read without protobuf).
        vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
        tok = AlbertTokenizerFast(vocab=vocab, _spm_precompiled_charsmap=_precompiled_charsmap(path))
    else:
        tok = AlbertTokenizerFast(vocab_file=str(path))
    backend = tok.backend_tokenizer
    if backend.get_vocab_size() != sp.get_piece_size():
        raise ModelLoadError(f"{path}: conversion gave {backend.get_vocab_size()} tokens, the model has "
                             f"{sp.get_piece_size()}")
    return backend


def _precompiled_charsmap(path: Path) -> "bytes | None":
    """``normalizer_spec.precompiled_charsmap`` (field 3, then 2) of a SentencePiece ModelProto file."""

    def fields(buf: bytes):
        i = 0
        while i < len(buf):
            key, i = varint(buf, i)
            kind = key & 7
            if kind == 0:
                value, i = varint(buf, i)
            elif kind == 2:
                size, i = varint(buf, i)
                value, i = buf[i:i + size], i + size
            elif kind in (1, 5):
                size = 8 if kind == 1 else 4
                value, i = buf[i:i + size], i + size
            else:
                raise ModelLoadError(f"{path}: not a SentencePiece model (wire type {kind})")
            yield key >> 3, value

    def varint(buf: bytes, i: int):
        value = shift = 0
        while True:
            byte = buf[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i

    for num, spec in fields(path.read_bytes()):
        if num == 3:
            for sub, value in fields(spec):
                if sub == 2:
                    return value or None
    return None


def pad_token_id(tokenizer) -> int:
    """Id of the padding token ([PAD] for WordPiece, <pad> for ALBERT); 0 if the vocabulary has neither."""
    for token in ("[PAD]", "<pad>"):
        idx = tokenizer.token_to_id(token)
        if idx is not None:
            return idx
    return 0
