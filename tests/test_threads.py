"""threads_for: small work runs numba's kernels on one thread, large work on all of them."""
import numba
import pytest

from epsim.solvers.threads import PARALLEL_MIN_NODE_UPDATES, numba_threads, threads_for


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs a numba thread pool of 2 or more")
def test_small_work_runs_on_one_thread_and_restores_the_pool():
    previous = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        with threads_for(PARALLEL_MIN_NODE_UPDATES - 1):
            assert numba.get_num_threads() == 1 and numba_threads() == 1
            with threads_for(10 * PARALLEL_MIN_NODE_UPDATES):  # nested large work stays on one
                assert numba.get_num_threads() == 1 and numba_threads() == 1
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 2 and numba_threads() == 2
        with threads_for(PARALLEL_MIN_NODE_UPDATES):
            assert numba.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with threads_for(1):
                raise RuntimeError("a kernel failed")
        assert numba.get_num_threads() == 2 and numba_threads() == 2
    finally:
        numba.set_num_threads(previous)
