"""Error types. Every message says what went wrong and what to do next."""


class ElmaError(Exception):
    """Base class of every error ELMA raises on purpose (the CLI prints it on one line)."""


class DataError(ElmaError):
    """A data file (SQuAD JSON, predictions, ...) is missing or malformed."""


class UsageError(ElmaError):
    """Bad arguments: the command line asks for something that cannot be done as asked (exit code 2)."""


class OutputExistsError(UsageError):
    """The output path is taken and nothing was asked to replace it (choose another path)."""


class ModelLoadError(ElmaError):
    """A model folder is missing files or does not match its config."""


class ExportError(ElmaError):
    """A model cannot be exported, or an exported piece does not reproduce its PyTorch step."""


class ExportTargetExists(ExportError, OutputExistsError):
    """``elma export -o`` names something already there (a bundle needs ``--overwrite``)."""


class BundleError(ElmaError):
    """A model bundle (``elma export``'s output) is missing files, altered, or of another format or backbone."""


class EngineLoadError(ElmaError):
    """A TensorRT engine cannot be used on this machine (other TensorRT version or GPU)."""


class TensorRTUnavailable(ElmaError):
    """TensorRT, or a CUDA GPU, is not present where an engine must be built or run."""


class PowerMeterError(ElmaError):
    """Base of the power-measurement errors (``elma.power``)."""


class PowerMeterUnavailable(PowerMeterError):
    """A power source cannot be opened here (no tegrastats, no sysfs rails, no instrument, no jtop service)."""


class PowerReadError(PowerMeterError):
    """An open power source failed mid-run (process died, instrument timed out or disconnected).

    The sampler records the failure as a gap and tries to reopen the source; it never crashes the caller.
    """


class OffloadError(ElmaError):
    """Offloading failed: the server cannot be reached, refused the request, or the device queue cannot be used.

    The device never needs the server to answer: callers return the local answer and keep the record queued.
    """


class OffloadRejected(OffloadError):
    """The server answered with an error that retrying will not fix (bad token, oversize or malformed request)."""


class QueueError(OffloadError):
    """The device's error-record queue (SQLite) cannot be opened or written."""


class UpdateError(ElmaError):
    """A model update cannot be used: bad signature or hashes, an older or expired release, another backbone, an
    unknown key, a failed health check, a server that cannot be reached, or no room on the disk (exit code 3).

    The installed model is never touched when this is raised."""
