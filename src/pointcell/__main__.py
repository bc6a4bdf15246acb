"""``python -m pointcell`` and the ``pointcell`` console script.

Importing the command line takes a moment; Ctrl-C in that moment prints one line, as it does
once a command runs (exit code 130).
"""

from __future__ import annotations

import sys


def run() -> None:
    """Import the command line and run it."""
    try:
        from pointcell.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)  # 128 + SIGINT, as pointcell.cli.EXIT_INTERRUPTED
    main()


if __name__ == "__main__":
    run()
