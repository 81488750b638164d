"""What one request may cost in memory: its pixels counted from the headers before anything is decoded, and the
memory of a large decode handed back to the operating system afterwards.

Why the second: glibc keeps freed blocks in its per-thread arenas. A decode thread that once held a 48 Mpx image
(about 190 MB as a palette plus its RGB copy) kept that memory for the life of the process, so RSS only grew with
every large upload. ``malloc_trim(0)`` returns the free pages of every arena (``madvise``), at a cost of a few
milliseconds, paid only after a large image.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Sequence
from functools import cache

from synthdet.io.pixels import peek_size

#: Decoded pixels above which a request's memory is handed back when it is done: 4 Mpx is 12 MB of RGB, below it
#: glibc reuses what it keeps and a trim would cost more than it returns.
TRIM_AFTER_PIXELS = 4_000_000


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_memory() -> bool:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim(0)``); False where there is no glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_after(size: tuple[int, int] | None) -> bool:
    """:func:`release_memory` when an image of ``size`` (decoded or refused) was large enough to be worth it."""
    return size is not None and size[0] * size[1] > TRIM_AFTER_PIXELS and release_memory()


def header_pixels(files: Sequence[bytes]) -> int:
    """The pixels ``files`` will decode to, read from their headers (no pixel is decoded); a file whose header
    cannot be read counts 0 here, and its decode refuses it."""
    return sum(w * h for w, h in (peek_size(data) or (0, 0) for data in files))
