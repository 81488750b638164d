"""Score folders of any size: listing streamed with ``os.scandir``, results written as they come, resumable.

Layout of a run writing ``OUT`` (``.parquet`` or ``.csv``): rows are written, every ``rows_per_part`` scored or
skipped files, to ``OUT.parts/part-<run>-<seq>.parquet``, each part a whole file (written beside, fsynced, renamed:
:func:`~synthdet.io.atomic.atomic_path`), so ``kill -9`` never leaves a torn part, only a lost unfinished one. When the
listing is exhausted the parts (and the rows of an earlier ``OUT``) are merged into ``OUT`` (atomically; parquet: one
row group per ``merge_rows`` rows) and the parts folder is removed. ``resume=True`` first reads back what is done
(the paths in ``OUT`` and in every part) and scores only the rest; a path is keyed by its printable form, so the
same file is never scored twice and never missing. Files that cannot be scored are rows too (``prob`` null,
``reason``; CSV output: ``OUT.skipped.csv``), so a resumed run does not retry them. One writer per ``OUT`` at a time.

Memory: the done-set (one string per file already scored) and one part of rows; the listing is never held whole.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthdet.engines.base import Scorer
from synthdet.extras import require
from synthdet.io.atomic import atomic_open, atomic_path, printable
from synthdet.io.pixels import IMAGE_SUFFIXES

COLUMNS = ("path", "prob", "label", "threshold", "reason")


def scan_images(root: str | Path, *, skip_hidden: bool = True) -> Iterator[str]:
    """Image files under ``root``, recursively, in directory order (not sorted: sorting needs the whole list). Hidden
    entries (``.name``: temp files, macOS resource forks) are left out unless ``skip_hidden=False``."""
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if skip_hidden and entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    yield entry.path


def stream_inputs(paths: Iterable[str | Path]) -> Iterator[str]:
    """Files, folders (streamed by :func:`scan_images`) and CSVs with a path column, as image paths; a folder with
    no image raises :class:`~synthdet.data.manifest.ManifestError` when its scan ends."""
    from synthdet.data.inputs import ManifestError, iter_inputs

    for p in map(Path, paths):
        if p.is_dir():
            n = 0
            for n, path in enumerate(scan_images(p), 1):  # noqa: B007 - n counts what was yielded
                yield path
            if not n:
                raise ManifestError(f"{p}: folder contains no images")
        else:
            yield from map(str, iter_inputs([p]))


def _pa() -> tuple[Any, Any]:
    require("pyarrow", "streamed score output (parts, .parquet)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _schema() -> Any:
    pa, _ = _pa()
    return pa.schema([("path", pa.string()), ("prob", pa.float64()), ("label", pa.int8()),
                      ("threshold", pa.float64()), ("reason", pa.string())])


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def done_paths(out: str | Path) -> set[str]:
    """The (printable) paths a run writing ``out`` has already finished: in ``out`` (parquet: its path column;
    CSV: its ``image_id`` rows are not paths, so its ``.skipped.csv`` and parts only — see :func:`done_ids`) and
    in every complete part."""
    out = Path(out)
    done: set[str] = set()
    sources = sorted(parts_dir(out).glob("part-*.parquet")) if parts_dir(out).is_dir() else []
    if out.suffix.lower() == ".parquet" and out.is_file():
        sources.insert(0, out)
    _, pq = _pa()
    for src in sources:
        for batch in pq.ParquetFile(src).iter_batches(columns=["path"], batch_size=65536):
            done.update(batch.column(0).to_pylist())
    skips = out.with_name(out.name + ".skipped.csv")
    if out.suffix.lower() != ".parquet" and skips.is_file():
        done.update(_csv_column(skips, "path"))
    return done


def done_ids(out: str | Path) -> set[str]:
    """The ``image_id`` values of a finished CSV ``out`` (Task A rows name files, not paths)."""
    out = Path(out)
    return set(_csv_column(out, "image_id")) if out.suffix.lower() == ".csv" and out.is_file() else set()


def _csv_column(file: Path, column: str) -> Iterator[str]:
    import csv

    with open(file, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield row[column]


@dataclass
class StreamResult:
    scored: int = 0  # files scored by this run
    skipped: int = 0  # files this run could not score
    resumed: int = 0  # files found done by an earlier run and not scored again
    rows: int = 0  # rows in the merged output (scored; CSV: without its skipped rows)
    seconds: float = 0.0


def score_stream(
    detector: Scorer,
    inputs: Iterable[str | Path],
    out: str | Path,
    *,
    resume: bool = False,
    rows_per_part: int = 1024,
    merge_rows: int = 65536,
    on_skip: Callable[[str, str], None] | None = None,
    progress: bool = False,
    **predict_kwargs: Any,
) -> StreamResult:
    """Score ``inputs`` (files, folders, CSVs: :func:`stream_inputs`) into ``out`` part by part, then merge.

    ``detector``: a detector as any engine loads it (:meth:`~synthdet.engines.base.Engine.load`). Without ``resume``
    an existing ``out`` and parts folder are replaced; with it, their paths are skipped and their rows kept.
    ``predict_kwargs`` go to ``detector.predict_paths`` (batch size, workers, ``max_pixels`` …).
    """
    from tqdm.auto import tqdm

    pa, pq = _pa()
    out = Path(out)
    parts = parts_dir(out)
    start = time.perf_counter()
    if not resume:
        shutil.rmtree(parts, ignore_errors=True)
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".skipped.csv").unlink(missing_ok=True)
    done = done_paths(out) if resume else set()
    ids = done_ids(out) if resume else set()
    result = StreamResult()
    threshold = float(detector.threshold)

    def todo() -> Iterator[str]:
        from synthdet.reporting.submit import RowError, image_id

        for p in stream_inputs(inputs):
            key = printable(p)
            try:
                name = image_id(p) if ids else ""
            except RowError:
                name = ""
            if key in done or (name and name in ids):
                result.resumed += 1
                continue
            done.add(key)  # a path listed twice is scored once
            yield p

    run = f"{time.time_ns():020d}"
    seq = 0
    rows: dict[str, list] = {c: [] for c in COLUMNS}

    def flush() -> None:
        nonlocal seq
        if not rows["path"]:
            return
        parts.mkdir(parents=True, exist_ok=True)
        with atomic_path(parts / f"part-{run}-{seq:06d}.parquet") as tmp:
            pq.write_table(pa.table(rows, schema=_schema()), tmp)
        seq += 1
        for v in rows.values():
            v.clear()

    bar = tqdm(desc="score", unit="img", disable=None if progress else True)
    for path, prob, reason in detector.predict_paths(todo(), **predict_kwargs):
        rows["path"].append(printable(path))
        rows["prob"].append(prob)
        rows["label"].append(None if prob is None else int(prob >= threshold))
        rows["threshold"].append(threshold)
        rows["reason"].append(reason or None)
        if prob is None:
            result.skipped += 1
            if on_skip is not None:
                on_skip(path, reason)
        else:
            result.scored += 1
        bar.update()
        if len(rows["path"]) >= rows_per_part:
            flush()
    flush()
    bar.close()
    result.rows = merge(out, threshold, merge_rows=merge_rows)
    result.seconds = time.perf_counter() - start
    return result


def _part_batches(out: Path) -> Iterator[Any]:
    """Record batches of ``out`` (when parquet) then of every part, oldest first."""
    _, pq = _pa()
    sources = sorted(parts_dir(out).glob("part-*.parquet")) if parts_dir(out).is_dir() else []
    if out.suffix.lower() == ".parquet" and out.is_file():
        sources.insert(0, out)
    for src in sources:
        yield from pq.ParquetFile(src).iter_batches(batch_size=65536)


def merge(out: str | Path, threshold: float, *, merge_rows: int = 65536) -> int:
    """Merge ``out``'s parts (and its existing rows) into ``out``, dropping repeated paths (a crash between the
    merged file's rename and the parts' removal leaves both); remove the parts. Returns the rows written
    (``threshold``: the detector's, for CSV labels)."""
    out = Path(out)
    if not parts_dir(out).is_dir():
        return _count_rows(out)
    seen: set[str] = set()

    def unique() -> Iterator[Any]:
        pa, _ = _pa()
        for batch in _part_batches(out):
            paths = batch.column(0).to_pylist()
            keep = [p not in seen and not seen.add(p) for p in paths]  # type: ignore[func-returns-value]
            if all(keep):
                yield batch
            elif any(keep):
                yield batch.filter(pa.array(keep))

    n = _write_parquet(out, unique(), merge_rows) if out.suffix.lower() == ".parquet" else _write_csv(out, unique(), threshold)
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    return n


def _write_parquet(out: Path, batches: Iterable[Any], merge_rows: int) -> int:
    pa, pq = _pa()
    n = 0
    pending: list[Any] = []
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, _schema()) as writer:
        for batch in batches:
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= merge_rows:
                writer.write_table(pa.Table.from_batches(pending, _schema()))
                n += sum(b.num_rows for b in pending)
                pending.clear()
        if pending:
            writer.write_table(pa.Table.from_batches(pending, _schema()))
            n += sum(b.num_rows for b in pending)
    return n


def _write_csv(out: Path, batches: Iterable[Any], threshold: float) -> int:
    """Task A rows (``image_id,prob,label,threshold``; an earlier run's rows first, written again by the same writer)
    and the skipped files in ``OUT.skipped.csv``, each written whole."""
    import csv

    from synthdet.reporting.submit import RowError, TaskAWriter

    skips = out.with_name(out.name + ".skipped.csv")
    old_skips = list(_csv_rows(skips))
    old_rows = list(_csv_rows(out))
    with atomic_open(out) as f, atomic_open(skips) as fs:
        sw = csv.writer(fs, lineterminator="\n")
        sw.writerow(["path", "reason"])
        sw.writerows(old_skips)
        writer = TaskAWriter(f, threshold)
        for row in old_rows:
            writer.write(row[0], float(row[1]))
        n_skips = len(old_skips)
        for batch in batches:
            for path, prob, reason in zip(*(batch.column(c).to_pylist() for c in ("path", "prob", "reason"))):
                try:
                    if prob is None:
                        raise RowError(reason)
                    writer.write(path, prob)
                except RowError as e:
                    sw.writerow([path, str(e)])
                    n_skips += 1
    if not n_skips:
        skips.unlink(missing_ok=True)
    return writer.n_rows


def _csv_rows(file: Path) -> Iterator[list[str]]:
    import csv

    if file.is_file():
        with open(file, newline="", encoding="utf-8") as f:
            r = csv.reader(f)
            next(r, None)
            yield from r


def _count_rows(out: Path) -> int:
    if not out.is_file():
        return 0
    if out.suffix.lower() == ".parquet":
        _, pq = _pa()
        return int(pq.ParquetFile(out).metadata.num_rows)
    return sum(1 for _ in _csv_rows(out))
