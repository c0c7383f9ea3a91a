"""One exception family, so the CLI can turn any bad input into one clear line and exit 2."""


class BenchError(Exception):
    """A user-facing error: the message names the problem and what to do."""


class ConfigError(BenchError):
    """Bad configuration: unknown name, impossible length, invalid value."""


class StoreError(BenchError):
    """The results store is unreadable, corrupt, or not writable."""


class DataError(BenchError):
    """A content source is missing or cannot supply the requested length."""
