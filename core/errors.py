"""Errors a user can act on. The CLI prints their message and exits non-zero, without a traceback."""


class DualkitError(Exception):
    """Base class: the message names the problem and the fix."""


class SpecError(DualkitError):
    """A preset or ``--set`` override that is not valid."""


class BackendError(DualkitError):
    """An unknown backend, a framework that is not installed, or a device that is not there."""


class DataError(DualkitError):
    """A dataset folder that is missing, incomplete or truncated."""


class CheckpointError(DualkitError):
    """A checkpoint that is not safetensors or does not fit the model."""


class RunError(DualkitError):
    """A run folder that cannot be used as asked (exists already, is not a run, ...)."""


class TrainingError(DualkitError):
    """Training stopped: e.g. the loss became NaN."""


class EnvError(DualkitError):
    """A Gymnasium environment that does not exist or whose spaces a task cannot handle."""


class ResultsError(DualkitError, ValueError):
    """A benchmark results file that is missing, not JSON or not of a schema this dualkit reads."""


class Interrupted(DualkitError):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
