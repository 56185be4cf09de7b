"""Error types. Every message says what went wrong and what to do next."""


class ElmaError(Exception):
    """Base class of every error ELMA raises on purpose (the CLI prints it on one line)."""


class DataError(ElmaError):
    """A data file (SQuAD JSON, predictions, ...) is missing or malformed."""


class ModelLoadError(ElmaError):
    """A model folder is missing files or does not match its config."""
