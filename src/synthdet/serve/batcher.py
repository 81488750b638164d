"""One worker thread owns the model and scores everything: concurrent requests are gathered into one forward pass.

Requests hand in :class:`~synthdet.detectors.assess.Pending` assessments (decoded, variants built) and get a
``concurrent.futures.Future`` of the :class:`~synthdet.detectors.assess.Assessment`. The worker takes the first waiting
request, then gathers more until it holds ``max_batch`` requests or ``max_wait_ms`` has passed since the first,
scores all their images with :func:`~synthdet.detectors.assess.score_in_passes` (images of one size from any request
share a forward pass, bounded in pixels on a CPU), and resolves each future. With
``max_batch=1`` every request is scored alone (micro-batching off, for comparison).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from synthdet.detectors.assess import Assessment, Pending, score_in_passes


@dataclass
class _Job:
    pending: Pending
    future: Future[Assessment]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """The scoring worker; :meth:`submit` from any thread, :meth:`start` / :meth:`stop` around the service's life.

    ``on_batch(n_requests, n_images, seconds)`` is called after each forward pass (metrics). ``in_flight()``, when
    given, counts the requests the service has admitted and not answered: when the gathered jobs are all of them,
    nothing is coming to wait for, so a lone request is scored at once."""

    def __init__(self, det: Any, *, max_batch: int = 8, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, int, float], None] | None = None,
                 in_flight: Callable[[], int] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.det = det
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.in_flight = in_flight
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for the worker."""
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="synthdet-scorer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, pending: Pending) -> Future[Assessment]:
        fut: Future[Assessment] = Future()
        self._queue.put(_Job(pending, fut))
        return fut

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and whatever else arrives within the wait, up to ``max_batch``; ``True`` when stopping."""
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            if self.in_flight is not None and self._queue.empty() and self.in_flight() <= len(jobs):
                break
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs, stopping = self._gather(first)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # timed-out requests: skipped
            if not jobs:
                continue
            start = time.perf_counter()
            try:
                probs = score_in_passes(self.det, [im for j in jobs for im in j.pending.images])
            except Exception as e:  # a failed forward pass fails its requests, never the worker
                for j in jobs:
                    j.future.set_exception(e)
                continue
            took = time.perf_counter() - start
            offset = 0
            for j in jobs:
                n = len(j.pending.images)
                try:
                    j.future.set_result(j.pending.finish(
                        self.det, probs[offset:offset + n], queue=(start - j.enqueued) * 1e3, score=took * 1e3))
                except Exception as e:
                    j.future.set_exception(e)
                offset += n
            if self.on_batch is not None:
                self.on_batch(len(jobs), offset, took)
