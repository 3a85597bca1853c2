import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from epsim.cli import set_command_environment  # noqa: E402

set_command_environment()  # the commands' thread settings, before any test module loads numpy

import pytest  # noqa: E402


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
