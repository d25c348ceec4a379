"""The one exception family the `loki` command turns into a clear message instead of a traceback."""


class LokiError(Exception):
    """A problem the user can fix (bad config, missing data, unusable checkpoint); the message says which."""


class ConfigError(LokiError, ValueError):
    """A config file or override is wrong; the message names the key and the problem."""


def check(ok: bool, key: str, problem: str) -> None:
    """Raise a ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {problem}")
