import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture
def one_thread():
    """Tiny problems: one thread each for torch and numba (no OpenMP oversubscription)."""
    import numba
    import torch

    n_torch, n_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(n_torch)
    numba.set_num_threads(n_numba)
