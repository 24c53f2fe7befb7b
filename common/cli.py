"""Stop-gap, to be deleted: `common.cli.CliError` and `python -m common.cli` for work still in progress.

The `fedadapt` entry point is `cli.main` and the user-error exception is `common.errors.UserError`.
simulations/runlock.py and tests/test_run_safety.py (being rewritten) still use this module; once they use
`common.errors` and `python -m cli.main`, delete it and its entry in tests/test_layout.py.
"""

from __future__ import annotations

import sys

from common.errors import UserError as CliError

__all__ = ["CliError"]

if __name__ == "__main__":
    from cli.main import main

    sys.exit(main())
