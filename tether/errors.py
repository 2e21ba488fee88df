"""User-facing errors. Each carries one line that names the file, line or field at fault.

They subclass ``ValueError`` so the Python API raises ``ValueError`` with the same message the CLI prints.
"""


class TetherError(ValueError):
    """A user error: bad config, bad data, bad path. The CLI prints ``str(err)`` and exits non-zero."""

    exit_code = 2


class ConfigError(TetherError):
    """A config value that is missing, of the wrong type, out of range, or inconsistent with another."""


class DataError(TetherError):
    """A data file or record that cannot be used (missing column, empty prompt, unreadable file)."""


class ModelError(TetherError):
    """A model or tokenizer path that cannot be loaded, or that does not fit the other models."""


class RewardError(TetherError):
    """A reward source that returned the wrong number of values or a non-finite value."""


class CheckpointError(TetherError):
    """A checkpoint or run directory that cannot be used as asked: unreadable or incomplete, written by another format
    version, made with a config that differs in a field that changes the result, or a run that would be overwritten."""


class TrainingError(TetherError):
    """A run that cannot go on: non-finite losses, gradients or rewards in too many consecutive steps, or weights that
    are not finite when they are about to be saved. The last good checkpoint is left as it was."""

    exit_code = 3


class Preempted(Exception):
    """Training stopped on SIGTERM or Ctrl-C after finishing its current step and writing a checkpoint. Running the same
    command (or building the trainer with the same config) again continues from that checkpoint."""

    exit_code = 75
