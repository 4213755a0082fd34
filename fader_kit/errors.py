"""What can go wrong, split the way a user needs it split.

:class:`UserError` is everything a user can fix (a missing folder, an unknown masker, missing
weights, a bad option, a test set with no normal image): the command line prints its message as
one ``error:`` line and exits with status 2.  Its message always names the file, folder or
argument at fault.  Any other exception is a bug in fader-kit or a plugin: the command line shows
its traceback, says so, and exits with status 1.

Subclasses keep the built-in base they had before (``ValueError``, ``KeyError``, ...) so that code
written against those still catches them.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing resource that the user can fix; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A bad argument or setting (an unknown profile, variant or table, a malformed option)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a run folder must hold) does not exist."""


BUG_HINT = ("this is a bug in fader-kit or in a plugin, not in your input; please report it with the "
            "traceback above")


class ModelDirError(UserError, ValueError):
    """A detector folder (``fader-kit fit --out``) that is missing a file, is damaged, or was written
    by a fader-kit whose format this one cannot read; the message names the folder and the file."""


class UnsafeFileError(UserError, ValueError):
    """A model, masker or weights file that holds pickled Python objects beyond tensors and plain
    values.  Unpickling such a file can run any code, so it is refused instead of loaded."""
