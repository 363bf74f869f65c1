"""Errors that mean "the user's input or settings are wrong", not "the code is wrong": the CLI prints them as one
message naming the culprit (file, line, parameter, shape), with no traceback."""


class UserInputError(ValueError):
    """Base of every error about the user's input: data, model folder, query, settings, work directory, outputs."""


class SettingsError(UserInputError):
    """An invalid or inconsistent setting (a step size, a batch size, a parameter group, a timestep grid...)."""


class OutputError(UserInputError):
    """An output folder that cannot be written (it holds other files) or read back (it is not an attribution)."""


class NotPreparedError(RuntimeError):
    """An artefact read before the phase that makes it ran (Workspace.prepare): reading never starts a computation."""


SEED_LIMIT = 2**63  # seeds key 64-bit counter hashes and torch generators


def check_seed(value, name: str) -> int:
    """A noise seed: an integer in [0, 2**63); anything else is a SettingsError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise SettingsError(f"{name} must be an integer in [0, 2**63), got {value!r}")
    return value


def read_json_file(path: str, error: type[UserInputError]):
    """The JSON in `path`; an unreadable or malformed file raises `error` naming the file, line and column."""
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as failure:
        raise error(f"{path} line {failure.lineno} column {failure.colno}: not valid JSON ({failure.msg})") from None
    except UnicodeDecodeError as failure:
        raise error(f"{path}: not UTF-8 text ({failure})") from None
