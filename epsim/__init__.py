"""epsim: analog-circuit simulator for energy-based networks trained with Equilibrium Propagation."""
import os

# numba's parallel loops run on OpenMP; its default busy-waiting threads make every short
# parallel region wait for a time slice when the cores are shared (measured: 50x slower
# training steps on a loaded 2-core machine). Sleeping workers cost nothing measurable
# when the machine is idle. Must be set before the OpenMP runtime loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
