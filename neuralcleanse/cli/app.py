"""The command group, logging, and how every outcome becomes an exit code.

Exit codes: 0 clean verdict (or success), 3 infected verdict, 4 inconclusive verdict, 2 bad input, 1 crash.
"""
from __future__ import annotations

import functools
import logging
import sys
import traceback
from typing import Any, Callable, Mapping

import click

from neuralcleanse.options import COMMON_FLAGS, PREPROCESSING_FLAGS, as_flags
from neuralcleanse.errors import InputError

EXIT_CLEAN = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_INFECTED = 3
EXIT_INCONCLUSIVE = 4


def guard(flags: Mapping[str, str] | None = None) -> Callable[[Callable[..., int | None]], Callable[..., None]]:
    """Maps outcomes to exit codes: InputError → 2 with one line, any other error → 1.

    `flags` turns the argument names that library messages give in backticks into the command's flags.
    """

    def decorate(fn: Callable[..., int | None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            try:
                code = fn(*args, **kwargs) or 0
            except InputError as exc:
                click.echo(f"error: {as_flags(str(exc), {**COMMON_FLAGS, **(flags or {})})}", err=True)
                code = EXIT_BAD_INPUT
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
                code = 130
            except click.exceptions.Exit:
                raise
            except click.ClickException:
                raise
            except Exception:  # a bug: show everything so it can be reported
                traceback.print_exc()
                code = EXIT_CRASH
            sys.exit(code)

        return wrapper

    return decorate


class _FlagNames(logging.Filter):
    """Warnings from the library name arguments in backticks; on the command line they name flags."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "`" in record.msg:
            record.msg = as_flags(record.msg, {**COMMON_FLAGS, **PREPROCESSING_FLAGS})
        return True


class _OneLineErrors(click.Group):
    """Usage errors as one `error:` line with exit code 2, like every other bad input."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neuralcleanse")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find, show and remove backdoors in image classifiers (Neural Cleanse)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_FlagNames())
    ctx.obj = {"progress": not quiet}
