"""Exceptions and warnings raised by pointcell.

Every error about user input derives from :class:`PointcellInputError`, so the command line can
print its message without a traceback, and library users can catch one type.
"""


class PointcellInputError(ValueError):
    """A file or argument supplied by the user is missing, malformed or inconsistent."""


class PointcellWarning(UserWarning):
    """Something in the input was repaired (e.g. duplicate points merged); the run goes on."""
