"""User-facing errors.

Anything the user can fix (a wrong flag, a missing file, a checkpoint for another model) raises a
`BridgeError`. The stage scripts catch it at the top level and print one line on stderr with a
non-zero exit, instead of a traceback from deep inside the library.
"""


class BridgeError(Exception):
    """An error caused by the user's input; its message is the whole explanation."""


class UnknownChoiceError(BridgeError, ValueError):
    """A name (model, dataset, pruner, ...) that is not one of the valid choices."""

    def __init__(self, kind, value, valid):
        self.kind, self.value, self.valid = kind, value, tuple(valid)
        super().__init__(f"unknown {kind} {value!r}; valid: {', '.join(self.valid)}")


class DataNotFoundError(BridgeError, FileNotFoundError):
    """A data set that is neither on disk nor downloadable."""


class CheckpointError(BridgeError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


class NonFiniteLossError(BridgeError, FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""
