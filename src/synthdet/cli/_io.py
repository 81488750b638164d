"""What every command shares: the output channels, one-line errors and skips, table-or-JSON output, options.

stdout carries results (tables, CSV rows, JSON); stderr carries progress, skips (``skipped PATH: reason``, one
line each, so they can be grepped) and errors. Tables printed to a pipe are never truncated or wrapped.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..atomic import printable
from ..extras import MissingExtraError

if TYPE_CHECKING:
    from rich.console import Console

#: Library exceptions that mean "bad input", reported as one line with exit code 2 (``ManifestError``,
#: ``NotADetectorError``, pydantic's ``ValidationError`` and ``UnknownNameError`` are ValueErrors;
#: ``WeightsNotFoundError`` is a FileNotFoundError), and a missing optional extra (it names what to install).
INPUT_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, MissingExtraError)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); on a pipe or file it never wraps or truncates (``| grep`` works)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(file=stream, highlight=False, soft_wrap=stderr or not tty, width=None if tty else 1_000_000)


def say(message: str) -> None:
    """A status line (rich markup allowed) on stdout."""
    console().print(message)


def note(message: str) -> None:
    """A status line (rich markup allowed) on stderr, e.g. when stdout carries JSON or CSV."""
    console(stderr=True).print(message)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the result to exit with ``code``."""
    from rich.markup import escape

    console(stderr=True).print(f"[bold red]error:[/] {escape(printable(message))}")
    return typer.Exit(code)


def skipped(path: object, reason: str) -> None:
    """One line per unusable file on stderr: ``skipped PATH: reason``."""
    from rich.markup import escape

    console(stderr=True).print(f"[yellow]skipped[/] {escape(printable(path))}: {escape(printable(reason))}")


def one_line(e: BaseException) -> str:
    """An exception as one readable line: pydantic's multi-line report becomes its first problems, an OS error
    names its file."""
    if type(e).__name__ == "ValidationError" and hasattr(e, "errors"):  # pydantic, without importing it here
        errors = e.errors()
        first = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'root'}: {x['msg']}" for x in errors[:3])
        return f"not a valid {getattr(e, 'title', 'input')}: {first}" + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{printable(e.filename)}: {e.strerror}"
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def print_json(obj: Any) -> None:
    """The machine-readable twin of a table, on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str, allow_nan=True) + "\n")
