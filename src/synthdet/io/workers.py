"""How much of the machine a scoring or extraction pass may use: the cores this process may run on, and how many of
them decode images while the network runs on the rest."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def num_workers_default() -> int:
    """Decoding workers: one per usable core, at most 4 (a container limited to 2 cores of a 64-core host gets 2)."""
    return max(0, min(4, usable_cpus()))
