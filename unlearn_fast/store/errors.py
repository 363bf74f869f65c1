"""The store's errors: a work directory (or an artefact in it) built from other inputs, damaged, or reached through a
link that leaves it."""
from ..errors import UserInputError

HINT = "use another --work-dir or --overwrite"


class StoreMismatchError(UserInputError):
    """A work directory (or an artefact in it) was built from other inputs or with another shape."""


class DamagedArtefactError(StoreMismatchError):
    """An artefact whose bytes are not what was written (truncated, overwritten, unreadable): the message names it."""


class UnsafePathError(UserInputError):
    """A path inside the work directory that is a symbolic link (following it would write outside the folder)."""
