"""epsim: analog-circuit simulator for energy-based networks trained with Equilibrium Propagation."""
import os

# numba's parallel loops run on OpenMP; its default busy-waiting threads make every short
# parallel region wait for a time slice when the cores are shared (measured: 50x slower
# training steps on a loaded 2-core machine). Sleeping workers cost nothing measurable
# when the machine is idle. Must be set before the OpenMP runtime loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The solver's matrix products are small (a batch times one crossbar); multi-threaded
# OpenBLAS spends longer synchronising its threads than computing them (measured: a
# 16x1568 @ 1568x100 product takes 0.2 ms on one thread, 60 ms on two busy cores), and
# numba already parallelises over the batch. Set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
