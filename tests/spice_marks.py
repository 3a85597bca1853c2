"""The skip mark of tests that run ngspice: the program epsim would run ($EPSIM_NGSPICE, else
``ngspice``) must be found, else the test is skipped with the install hint."""
import shutil

import pytest

from epsim.solvers.ngspice import INSTALL_HINT, default_program

needs_ngspice = pytest.mark.skipif(shutil.which(default_program()) is None, reason=INSTALL_HINT)
