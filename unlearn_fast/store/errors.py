"""The store's error: a work directory (or an artefact in it) built from other inputs, or damaged."""
from ..errors import UserInputError

HINT = "use another --work-dir or --overwrite"


class StoreMismatchError(UserInputError):
    """A work directory (or an artefact in it) was built from other inputs or with another shape."""
