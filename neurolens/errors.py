"""Every exception and warning the neurolens library raises on purpose.

Each error is a ``NeurolensError``: the CLI turns them into one line once, at its edge
(``neurolens.cli``), and the plugin's session end catches them (with ``OSError``) in one
place (``pytest_neurolens.session_end``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NeurolensError(Exception):
    """Base class of every error neurolens raises on purpose."""


class InvalidArgumentError(NeurolensError, ValueError, TypeError):
    """An argument, option or filter value that cannot be used; the message names it.
    (A ValueError, and a TypeError where a value of the wrong type was given.)"""


class MissingExtraError(NeurolensError, ImportError):
    """A feature needs an optional extra that is not installed; the message names the install."""


class RunValidationError(NeurolensError, ValueError):
    """A run document (or its fingerprint) does not satisfy the run schema.

    ``field`` is the dotted path of the offending field (``""`` for the whole document).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class RunExistsError(NeurolensError, FileExistsError):
    """A run file with the same id already exists; the store is never overwritten."""


class StoreError(NeurolensError):
    """The store cannot be read or written (bad root, damaged files, I/O failure)."""


class RunNotFoundError(NeurolensError, LookupError):
    """No run, or more than one run, matches a run id or prefix."""


class ManifestWarning(UserWarning):
    """A manifest line was skipped: torn, unparsable, invalid or a duplicate run id."""


class IndexWarning(UserWarning):
    """The derived index is missing, stale or corrupt; answers come from the manifest."""
