"""What every command shares: the output channels, one-line errors and skips, table-or-JSON output, options.

stdout carries results (tables, CSV rows, JSON); stderr carries progress, skips (``skipped PATH: reason``, one
line each, so they can be grepped) and errors. Tables printed to a pipe are never truncated or wrapped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from synthdet.extras import MissingExtraError
from synthdet.io.atomic import printable

if TYPE_CHECKING:
    from rich.console import Console

    from synthdet.backbones.base import Backbone

#: Library exceptions that mean "bad input", reported as one line with exit code 2 (``ManifestError``,
#: ``NotADetectorError``, pydantic's ``ValidationError`` and ``UnknownNameError`` are ValueErrors;
#: ``WeightsNotFoundError`` is a FileNotFoundError), and a missing optional extra (it names what to install).
INPUT_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, MissingExtraError)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
NativeSize = Annotated[int | None, typer.Option(
    "--native-size", min=32, help="Feed images at their own scale up to this many px (no resampling of smaller "
                                  "ones; fully convolutional backbones), instead of resizing to the backbone's size.")]
TapPoolOption = Annotated[str, typer.Option(
    "--tap-pool", help="Block features: mean | meanstd (mean and spread of each stage) | texture (meanstd + channel "
                       "correlations of early stages). CNN backbones.")]


def make_backbone(name: str, *, weights: Path | None = None, native_size: int | None = None, tap_pool: str = "mean",
                  device: str | None = None) -> Backbone:
    """The backbone a command asked for, with its input scale and block summary (a bad value exits 2)."""
    from synthdet.backbones.base import create_backbone

    if tap_pool not in ("mean", "meanstd", "texture"):
        raise fail(f"--tap-pool must be mean, meanstd or texture, not {tap_pool!r}")
    bb = create_backbone(name, weights=weights, device=device, tap_pool=tap_pool)  # type: ignore[arg-type]
    if native_size:
        bb.preprocess = bb.preprocess.at_native(native_size)
    return bb
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
    """One line per unusable file on stderr: ``skipped PATH: reason`` (on a line of its own: a progress bar being
    drawn is cleared first and redrawn after)."""
    from rich.markup import escape
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
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
