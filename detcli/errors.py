"""Errors that end a command with a one-paragraph message instead of a traceback."""


class DetcliError(Exception):
    """A user-facing error: the CLI prints its message and exits with `exit_code`."""

    exit_code = 1


class ConfigError(DetcliError):
    """A config key has a value that cannot work; the message names the key."""

    exit_code = 2


class DataError(DetcliError):
    """A dataset file is missing or malformed; the message names the file (and line or id)."""


class CheckpointError(DetcliError):
    """A checkpoint cannot be read or does not match the model; the message names the file."""
