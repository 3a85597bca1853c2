"""Robustness evaluation: attacks and corruptions injected at the model input, with sanity checks.

Modules: :mod:`~epsim.robustness.corruptions` (CIFAR-10-C corruptions), :mod:`~.attacks`
(APGD-style PGD, FGSM, Square attack), :mod:`~.adapters` (circuit and software models behind
one interface), :mod:`~.sanity` (automatic checks), :mod:`~.evaluate` (sweeps -> table rows),
:mod:`~.cli` (``python -m epsim.robustness``). Submodules are imported on use.
"""
