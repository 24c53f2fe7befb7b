"""The one exception the library raises for a mistake the user can fix (a busy run folder, a bad option value).

It lives in the library, not in `cli/`, because the code that detects such a mistake (e.g. the run-folder lock)
is library code that must not import the command line; `cli/main.py` reports it as one line with exit status 2,
the same as a `ValueError` or `FileNotFoundError`.
"""

from __future__ import annotations


class UserError(Exception):
    """A user mistake: the command line prints its message as one line and exits with status 2."""
