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
