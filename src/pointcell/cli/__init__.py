"""Command line: ``pointcell <command>``. Each command parses its options, calls one library
function and prints what it did; the library (and torch) is imported only by the command that
runs, so ``pointcell --help`` starts at once."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import warnings
from typing import Any

import click

from pointcell import __version__
from pointcell.cli.evaluate import evaluate
from pointcell.cli.labels import labels
from pointcell.cli.predict import predict
from pointcell.cli.tools import baseline, demo, export
from pointcell.cli.train import train
from pointcell.cli.tune import tune
from pointcell.errors import PointcellInputError
from pointcell.io.atomic import remove_live_temporaries

EXIT_ERROR = 1  # any usage error or bad input: one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    click.secho(f"warning: {message}", fg="yellow", err=True)


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that ``finally`` blocks clean up."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


class _Group(click.Group):
    """One exit-code convention for every command: 0 done, 1 for usage errors and bad input
    alike (one line, never a traceback), 130 on Ctrl-C and 143 on SIGTERM, with the temporary
    files of unfinished writes removed."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PointcellInputError as exc:
            raise click.ClickException(str(exc)) from exc

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        kwargs["standalone_mode"] = False
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        try:
            result = super().main(*args, **kwargs)
        except (click.exceptions.Abort, KeyboardInterrupt):
            _stop("interrupted", EXIT_INTERRUPTED)
        except _Terminated:
            _stop("terminated", EXIT_TERMINATED)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_ERROR)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(result if isinstance(result, int) else 0)


def _stop(word: str, code: int) -> None:
    removed = remove_live_temporaries()
    note = f"; removed {removed} unfinished file(s)" if removed else ""
    click.echo(f"{word}{note}", err=True)
    sys.exit(code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="pointcell")
@click.option("-v", "--verbose", is_flag=True, help="Show debug messages.")
def main(verbose: bool) -> None:
    """Cell detection and segmentation in pathology images from point labels."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    warnings.showwarning = _show_warning


for _command in (labels, train, predict, evaluate, baseline, export, tune, demo):
    main.add_command(_command)
