"""The one exception family the `loki` command turns into a clear message instead of a traceback."""


class LokiError(Exception):
    """A problem the user can fix (bad config, missing data, unusable checkpoint); the message says which."""
