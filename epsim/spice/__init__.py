"""SPICE files of trained circuits, with epsim's own solutions beside them.

Above the solver layer: :mod:`epsim.spice.samples` writes per-sample DC netlists (every
phase, ngspice and Xyce dialects) with the reference solver's node voltages;
:mod:`epsim.spice.transient` writes transient netlists (node capacitors, ``.tran``) and runs
ngspice on them. The netlists themselves come from :mod:`epsim.circuit` (IR, compiler,
writer).
"""
