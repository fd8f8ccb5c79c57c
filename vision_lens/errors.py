"""The faults of a user's input: each message says what to fix, and the command line prints it (exit status 2).

Every error the package raises for a bad input derives from :class:`UserError`;
anything else (a bare ``ValueError``, ``KeyError``, ...) is a bug, and the
command line lets its traceback through rather than present it as the user's
fault.
"""

from __future__ import annotations


class UserError(Exception):
    """A fault of the command's input (option, data, weights, folder); the message names it and says what to do."""


class OptionError(UserError, ValueError):
    """An option's value is out of its range or names nothing usable; the message names the option."""


class MissingExtraError(UserError, ImportError):
    """What a command or a model family needs is an extra of the package that is not installed; the message says
    which, and the command that installs it."""

    def __init__(self, what: str, distribution: str, extra: str):
        super().__init__(f"{what} needs {distribution}, which is not installed; install it with "
                         f"pip install 'vision-lens[{extra}]'")
