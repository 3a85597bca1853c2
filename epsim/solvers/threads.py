"""When to let numba's parallel loops use more than one thread."""
from __future__ import annotations

import numba

# Below this many node updates per sweep (batch x free nodes), waking the thread pool for
# every parallel loop costs more than the loop itself; measured on the MNIST circuit MLP
# at batch 8: 17 s per epoch on one thread vs 23 s on two (2-core machine, load ~5).
PARALLEL_MIN_NODE_UPDATES = 20_000


def numba_threads() -> int:
    """Threads numba's parallel loops would use now (1 inside a small-work block)."""
    return 1 if _single_depth else numba.get_num_threads()


_single_depth = 0  # > 0 while a threads_for block has already set one thread


class threads_for:
    """``with threads_for(node_updates):`` runs the enclosed numba kernels on one thread when
    the work is small (a plain class: entered several times per training batch)."""

    __slots__ = ("_previous",)

    def __init__(self, node_updates: int):
        self._previous = None
        if not _single_depth and node_updates < PARALLEL_MIN_NODE_UPDATES:
            n = numba.get_num_threads()
            if n > 1:
                self._previous = n

    def __enter__(self):
        global _single_depth
        if self._previous is not None:
            numba.set_num_threads(1)
            _single_depth += 1
        return self

    def __exit__(self, *exc):
        global _single_depth
        if self._previous is not None:
            _single_depth -= 1
            numba.set_num_threads(self._previous)
        return False
