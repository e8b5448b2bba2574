"""The ``broadcaster`` command's entry point, kept free of heavy imports.

Loading the command line (Typer, Rich, SQLAlchemy, …) takes a moment; a Ctrl-C during it would
otherwise end in a traceback from the import machinery instead of the one line every other
interruption gets.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from broadcaster.cli import main as run_command
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run_command()
