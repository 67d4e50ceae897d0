"""Errors a user can cause and fix. Stages print them as one line and exit non-zero."""


class MixpipeError(Exception):
    """Base class of every error that is the user's to fix (bad params, missing inputs, ...)."""


class ConfigError(MixpipeError):
    """params.yaml holds an invalid value; the message names the key."""


class UnknownNameError(ConfigError):
    """A registry lookup by name failed."""


class DataError(MixpipeError):
    """An input file or table is missing, malformed or fails its schema."""


class StorageError(MixpipeError):
    """A file could not be written or read where params.yaml points (full disk, a file where a
    folder should be, no permission)."""


class ClusterError(MixpipeError):
    """Ray could not be reached or a submitted job failed."""


class TrainingDiverged(MixpipeError):
    """A training run's loss became NaN or infinite; its last finite epoch's checkpoint is kept."""
