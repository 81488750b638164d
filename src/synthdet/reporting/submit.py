"""Write submission files in the MediaEval Synthetic Images (SID) organisers' format.

Task A is one CSV ``image_id,prob,label,threshold``, handed in as ``<team>_constrained.zip`` / ``<team>_open.zip``
holding that one CSV (:func:`write_task_a_zip`). Task B is a zip ``<team>_localization_masks.zip`` of one
``<image stem>.npz`` per image (a float16 ``(H, W)`` map in [0, 1] at the image's own size; all zeros where nothing
is found) plus ``scores.csv`` with an extra ``loc_threshold`` column. Zips are reproducible: the same rows give the
same bytes (entries in order, one fixed timestamp). A malformed submission is usually rejected outright or scored as zero, so
the writers refuse to produce one; :mod:`synthdet.reporting.submission_check` names every problem of a written one.
"""

from __future__ import annotations

import csv
import io
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from synthdet.io.atomic import atomic_open, atomic_path, printable, write_text
from synthdet.io.pixels import list_images

TASK_A_COLUMNS = ("image_id", "prob", "label", "threshold")
TASK_B_COLUMNS = (*TASK_A_COLUMNS, "loc_threshold")
MASKS_ZIP_SUFFIX = "_localization_masks.zip"
#: Task A run types: ``constrained`` (only the official training data) and ``open`` (any data).
RUNS = ("constrained", "open")
#: Timestamp of every zip entry, so that a zip's bytes depend on its contents only.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
#: Decimals written for probabilities and thresholds; labels are computed from the rounded values so that
#: ``label == (prob >= threshold)`` still holds for whoever re-reads the file.
DECIMALS = 6
#: How many offending ids or rows a message lists before it only gives the count.
MAX_LISTED = 10


def _quantize(x: float) -> float:
    """The float a reader gets back after we write ``x`` with :data:`DECIMALS` decimals."""
    return float(f"{x:.{DECIMALS}f}")


def _require_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def listing(items: Sequence[str], cap: int = MAX_LISTED) -> str:
    """``a, b, c`` or ``a, b, … and 15 more``: enough to find the problem without flooding the terminal."""
    shown = ", ".join(str(i) for i in items[:cap])
    return shown if len(items) <= cap else f"{shown}, … and {len(items) - cap} more"


class RowError(ValueError):
    """A row the organisers would reject (bad file name, duplicate id, probability outside [0, 1]); nothing of it
    was written. Streaming callers skip the image with this reason; :func:`write_task_a` fails whole."""


def image_id(path: str | Path) -> str:
    """The ``image_id`` of a file: its name, as the organisers match on file names.

    On Linux a file name is bytes; one that is not UTF-8 reaches Python with surrogate escapes and has no faithful
    form in a UTF-8 CSV. It is refused (:class:`RowError`, naming the bytes as ``\\xe9`` escapes), never written
    in a lossy form that matches no file.
    """
    name = Path(path).name
    if not name:
        raise RowError(f"empty image_id from {printable(path)!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"file name '{printable(name)}' is not valid UTF-8 and cannot be written to a UTF-8 CSV; "
                       "rename the file") from None
    return name


def missing_row(prior: float, threshold: float) -> tuple[float, int]:
    """``(prob, label)`` written for an image that could not be scored: the detector's ``prior`` (the share of
    generated images it was trained on) and the label that prior gets at ``threshold``."""
    _require_unit("prior", prior)
    p = _quantize(prior)
    return p, int(p >= _quantize(threshold))


class TaskAWriter:
    """Streams ``image_id,prob,label,threshold`` rows (plus ``extra`` constant columns) to a text file: LF line
    endings, :data:`DECIMALS` decimals, ``label`` computed from the written (rounded) values, unique UTF-8 ids.

    The header is written with the first row, so a run that scores nothing writes nothing.
    """

    def __init__(self, sink: IO[str], threshold: float, extra: dict[str, float] | None = None) -> None:
        _require_unit("threshold", threshold)
        self.threshold = _quantize(threshold)
        self._extra = {k: _quantize(v) for k, v in (extra or {}).items()}
        self._csv = csv.writer(sink, lineterminator="\n")
        self._seen: dict[str, str] = {}  # image_id -> the path it came from, in the order written

    @property
    def ids(self) -> list[str]:
        return list(self._seen)

    @property
    def n_rows(self) -> int:
        return len(self._seen)

    def write(self, path: str | Path, prob: float) -> int:
        """Write one row for the file at ``path``; return its label. Raises :class:`RowError` (nothing written)."""
        name = image_id(path)
        if name in self._seen:
            raise RowError(f"duplicate image_id {name} (also {printable(self._seen[name])})")
        prob = float(prob)
        if not 0.0 <= prob <= 1.0:
            raise RowError(f"prob outside [0, 1]: {name} ({prob})")
        p = _quantize(prob)
        label = int(p >= self.threshold)
        if not self._seen:
            self._csv.writerow([*TASK_A_COLUMNS, *self._extra])
        self._csv.writerow([name, f"{p:.{DECIMALS}f}", label, f"{self.threshold:.{DECIMALS}f}",
                            *(f"{v:.{DECIMALS}f}" for v in self._extra.values())])
        self._seen[name] = str(path)
        return label


def write_scores(
    results: Iterable[tuple[str, float | None, str]],
    threshold: float,
    sink: IO[str],
    on_skip: Callable[[str, str], None],
) -> int:
    """Stream ``(path, prob, reason)`` results (``Detector.predict_paths``) as Task A rows while they are scored;
    a file without a probability, or whose row would be rejected (:class:`RowError`), goes to ``on_skip(path,
    reason)`` instead. Returns the number of rows written (0: nothing, not even the header)."""
    writer = TaskAWriter(sink, threshold)
    for path, prob, reason in results:
        if prob is None:
            on_skip(path, reason)
            continue
        try:
            writer.write(path, prob)
        except RowError as e:
            on_skip(path, str(e))
    return writer.n_rows


def _write_rows(
    rows: Iterable[tuple[str, float | None]], threshold: float, sink: IO[str], prior: float | None,
    extra: dict[str, float] | None = None,
) -> list[str]:
    """Every row or an error: a missing probability takes ``prior`` (refused when there is none)."""
    writer = TaskAWriter(sink, threshold, extra)
    fill = None if prior is None else missing_row(prior, threshold)[0]
    for path, prob in rows:
        if prob is None or np.isnan(prob):
            if fill is None:
                raise ValueError(f"{printable(path)} has no probability and no prior was given for such images")
            prob = fill
        try:
            writer.write(path, prob)
        except RowError as e:
            raise RowError(f"{e}; a submission needs one valid row per test image") from None
    if not writer.n_rows:
        raise ValueError("no rows to write")
    return writer.ids


def _check_team(team: str) -> None:
    if not team or Path(team).name != team or "/" in team or "\\" in team:
        raise ValueError(f"team must be a plain non-empty name, got {team!r}")


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """One deflated entry at the zip's root, with the fixed timestamp."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def task_a_zip_name(team: str, run: str) -> str:
    """``<team>_<run>.zip``, the name the organisers expect for a Task A run."""
    _check_team(team)
    if run not in RUNS:
        raise ValueError(f"run must be one of {', '.join(RUNS)}, not {run!r}")
    return f"{team}_{run}.zip"


def write_task_a_zip(
    rows: Iterable[tuple[str, float | None]], threshold: float, out_dir: Path, team: str, run: str, *,
    prior: float | None = None,
) -> Path:
    """Write ``<out_dir>/<team>_<run>.zip`` holding one CSV, ``<team>_<run>.csv`` (the rows of :func:`write_task_a`),
    atomically; one run per zip, as the organisers require."""
    name = task_a_zip_name(team, run)
    text = io.StringIO()
    _write_rows(rows, threshold, text, prior)
    zip_path = Path(out_dir) / name
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        _add(zf, f"{Path(name).stem}.csv", text.getvalue().encode("utf-8"))
    return zip_path


def write_task_a(
    rows: Iterable[tuple[str, float | None]], threshold: float, out: Path, *, prior: float | None = None
) -> Path:
    """Write the Task A CSV (atomically) from ``(image_id, prob)`` pairs; ``prob`` None/NaN means the image could
    not be read.

    Such images still need a row (every test image must appear): they get ``prior`` and the label it implies at
    the threshold (:func:`missing_row`); without a prior they are an error. ``image_id`` may be a path: only its
    file name is written, as the organisers match on file names. Any bad row fails the whole file (no output).
    """
    out = Path(out)
    with atomic_open(out) as f:
        _write_rows(rows, threshold, f, prior)
    return out


def _npz_bytes(image_id: str, mask: np.ndarray, loc_threshold: float) -> bytes:
    """The ``.npz`` of one map: float16 in [0, 1]; all zeros when no pixel is above ``loc_threshold`` (nothing found,
    as the organisers ask: "a valid array of the same size … containing only 0.0 values")."""
    arr = np.asarray(mask, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{image_id}: mask must be 2-D (H, W), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{image_id}: mask contains NaN or inf")
    arr = np.clip(arr, 0.0, 1.0).astype(np.float16)
    if not (arr > loc_threshold).any():
        arr = np.zeros_like(arr)
    buf = io.BytesIO()
    np.savez(buf, mask=arr)  # uncompressed: the zip deflates it once
    return buf.getvalue()


def write_task_b(
    masks: Iterable[tuple[str, np.ndarray]],
    scores: Iterable[tuple[str, float | None]],
    threshold: float,
    loc_threshold: float,
    out_dir: Path,
    team: str,
    *,
    prior: float | None = None,
) -> tuple[Path, Path]:
    """Write ``<team>_localization_masks.zip`` and ``scores.csv`` into ``out_dir``; return both paths.

    ``masks`` is streamed (one mask in memory at a time) and must cover exactly the images in ``scores``.
    """
    _check_team(team)
    _require_unit("loc_threshold", loc_threshold)
    text = io.StringIO()
    ids = _write_rows(scores, threshold, text, prior, {"loc_threshold": loc_threshold})
    stems = [Path(i).stem for i in ids]
    counts = Counter(stems)
    clashes = [i for i, s in zip(ids, stems) if counts[s] > 1]
    if clashes:
        raise ValueError(f"images share a stem, so their masks would share an .npz name: {listing(clashes)}")

    out_dir = Path(out_dir)
    zip_path = out_dir / f"{team}{MASKS_ZIP_SUFFIX}"
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        written: set[str] = set()
        for image_id, mask in masks:
            stem = Path(image_id).stem
            if stem in written:
                raise ValueError(f"two masks for {stem}.npz")
            _add(zf, f"{stem}.npz", _npz_bytes(image_id, mask, loc_threshold))
            written.add(stem)
        if missing := sorted(set(stems) - written):
            raise ValueError(f"no mask for {len(missing)} scored image(s): {listing(missing)}")
        if unscored := sorted(written - set(stems)):
            raise ValueError(f"masks without a score: {listing(unscored)}")
    csv_path = write_text(out_dir / "scores.csv", text.getvalue())
    return zip_path, csv_path


@contextmanager
def spooled_maps(
    maps: Iterable[tuple[str, np.ndarray | None, str]], score: Callable[[np.ndarray], float]
) -> Iterator[tuple[Iterator[tuple[str, np.ndarray]], list[tuple[str, float | None]]]]:
    """``(masks, scores)`` for :func:`write_task_b` from streamed ``(path, map or None, reason)`` predictions (a
    localizer's ``predict_masks``), ``score`` turning a map into the image-level probability. Each image is predicted
    once; its map waits on disk as float16 while inside the block, as the writer takes the scores before the masks.
    An image without a map is an error: a submission needs a mask for every test image."""
    scores: list[tuple[str, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="synthdet-masks-") as tmp:
        for i, (p, prob, reason) in enumerate(maps):
            if prob is None:
                raise ValueError(f"{p}: {reason}; a submission needs a mask for every test image")
            scores.append((p, score(prob)))
            np.save(Path(tmp) / f"{i}.npy", prob.astype(np.float16))
        yield ((p, np.load(Path(tmp) / f"{i}.npy")) for i, (p, _) in enumerate(scores)), scores


def list_test_images(folder: Path) -> list[Path]:
    """The test images of a folder, sorted, hidden files such as macOS ``._x.jpg`` excluded."""
    return list_images(folder, skip_hidden=True)
