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
