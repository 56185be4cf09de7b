"""Tokenizers for ELMA models: always a ``tokenizers.Tokenizer`` at run time.

A model folder ships ``tokenizer.json`` (the fast-tokenizer format), which the
``tokenizers`` package loads with no torch or transformers, on a Jetson too.
An ALBERT SentencePiece model (``spiece.model``) is converted to that format
once, at training or export time, which needs transformers and sentencepiece.
"""

import shutil
import tempfile
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
    """Convert an ALBERT SentencePiece model into a fast tokenizer (lower-casing, [CLS]/[SEP] template).

    ``from_pretrained`` on a folder holding only ``spiece.model`` runs transformers' own converter
    (normaliser charsmap included); transformers 5 ignores a bare ``vocab_file`` argument and would
    build a 5-token vocabulary, hence the folder.
    """
    try:
        import sentencepiece
        from transformers import AlbertTokenizerFast
    except ImportError as err:
        raise ModelLoadError(f"{path}: converting a SentencePiece model needs transformers and sentencepiece "
                             f"(pip install 'elma[train]')") from err
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / "spiece.model")
        backend = AlbertTokenizerFast.from_pretrained(tmp).backend_tokenizer
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    if backend.get_vocab_size() != pieces:
        raise ModelLoadError(f"{path}: conversion gave {backend.get_vocab_size()} tokens, the model has {pieces}")
    return backend


def pad_token_id(tokenizer) -> int:
    """Id of the padding token ([PAD] for WordPiece, <pad> for ALBERT); 0 if the vocabulary has neither."""
    for token in ("[PAD]", "<pad>"):
        idx = tokenizer.token_to_id(token)
        if idx is not None:
            return idx
    return 0


def save_tokenizer(tokenizer, folder: "str | Path") -> Path:
    """Write ``folder/tokenizer.json`` atomically; returns its path."""
    from elma.fsutil import atomic_write

    target = Path(folder) / TOKENIZER_NAME
    atomic_write(target, lambda tmp: tokenizer.save(tmp))
    return target
