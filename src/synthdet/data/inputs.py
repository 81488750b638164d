"""What a scoring command was given, expanded into image paths: files, folders (recursively) and CSV/TSV listings
with a path column. Kept apart from :mod:`synthdet.data.manifest` (which reads listings into labelled frames with
pandas) so that scoring needs the standard library only."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from synthdet.io.pixels import list_images

#: Accepted names of a listing's path column (case and surrounding spaces ignored), first match wins.
PATH_COLUMNS = ("path", "filepath", "file", "image", "image_path")


class ManifestError(ValueError):
    """The input cannot be read as a dataset at all (as opposed to one bad image in it)."""


def find_column(columns: Sequence[str], candidates: tuple[str, ...], what: str, listing: Path) -> str:
    """The first of ``candidates`` among a listing's ``columns`` (as written there), or a one-line error."""
    cols = {str(c).strip().lower(): c for c in columns}
    found = next((cols[c] for c in candidates if c in cols), None)
    if found is None:
        raise ManifestError(f"{listing}: no {what} column; expected one of {list(candidates)}, found {list(columns)}")
    return str(found)


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files, folders (recursively, image suffixes only) and CSVs with a path column into image paths;
    a listing's relative paths are relative to its folder."""
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ManifestError(f"{p}: folder contains no images")
            yield from found
        elif p.suffix.lower() in (".csv", ".tsv"):
            yield from (x if x.is_absolute() else p.parent / x for x in map(Path, _listed_paths(p)))
        else:
            yield p


def _listed_paths(listing: Path) -> list[str]:
    try:
        with listing.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if listing.suffix.lower() == ".tsv" else ",")
            col = find_column(reader.fieldnames or [], PATH_COLUMNS, "path", listing)
            return [row[col] for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{listing}: not a readable CSV ({e})") from None
