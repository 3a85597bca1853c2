"""The clamp diodes: their parameters and their law, for every solver, in one place.

Conventions (SPICE): a diode conducts from anode to cathode; the current through it is
``I = Is * (exp(V / (n * Vt)) - 1)`` with ``V = V_anode - V_cathode`` in volts.
An *ideal* diode is the limit of zero forward drop and zero reverse current: it imposes
the inequality ``V_anode <= V_cathode``, carrying whatever non-negative current KCL needs.

Clamp pairs
-----------
A free node at ``v`` may have two clamp diodes: the *hi* diode from the node to its upper
rail ``hi`` and the *lo* diode from its lower rail ``lo`` to the node (a rail of ``+inf`` /
``-inf``: no diode). With Shockley diodes the current leaving the node through them is::

    i(v)  = is_n (exp((v - hi) / nVt) - 1) - is_n (exp((lo - v) / nVt) - 1)
    di/dv = is_n / nVt (exp((v - hi) / nVt) + exp((lo - v) / nVt))
    P(v)  = is_n (nVt exp((v - hi) / nVt) - v) + is_n (nVt exp((lo - v) / nVt) + v)

``P`` is the co-content (``dP/dv = i``), the diodes' term of the convex energy the circuit's
equilibrium minimises. Units: ``v``, rails and ``nVt`` in volts; ``is_n`` in the unit of the
returned current (amperes, or amperes / ``g_unit`` = volts in the normalised circuits of the
solvers); ``di/dv`` in that unit per volt; ``P`` in that unit times volts.

With ideal diodes the co-content is the indicator of the box ``lo <= v <= hi`` (0 inside,
``+inf`` outside): the node is clamped to the nearer rail when its neighbours would drive it
out, and the KCL violation of a state is measured by :func:`ideal_violation`.

Exponent clamping: every form caps exponent arguments at ``EXP_ARG_MAX`` (far beyond any
physical current, finite in float64); the torch form also floors them (``EXP_ARG_FLOOR``:
below it a diode's current is under ``1e-30 Is``, and subnormal exponentials are slow on
CPUs) and lowers the cap below float32 overflow.

One law, three array libraries
------------------------------
- numba, scalar (inlined into the layered solver's per-node loops; callable from Python):
  :func:`clamp_current`, :func:`ideal_violation`.
- numpy, vectorised over nodes (wire solver, MNA, transient powers):
  :func:`shockley_array`, :func:`clamp_current_array`, :func:`clamp_cocontent_array`,
  :func:`clamp_power_array`, :func:`ideal_violation_array`.
- torch, on tensors (CPU or CUDA; torch is imported on first use): :class:`TorchRails`,
  :func:`clamp_current_torch`, :func:`ideal_violation_torch`.

``tests/test_diodes.py`` checks that the forms agree with each other, that ``di/dv`` is the
derivative of ``i`` and that the co-content's derivative is the current.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numba as nb
import numpy as np

from ..errors import EpsimError

BOLTZMANN_J_PER_K = 1.380649e-23
ELEMENTARY_CHARGE_C = 1.602176634e-19

EXP_ARG_MAX = 300.0  # exp() argument cap: far beyond any physical diode current
EXP_ARG_FLOOR = 70.0  # torch exp() argument floor (float64): exp(-70) ~ 4e-31
EXP_ARG_FLOOR_F32 = 50.0  # (float32): exp(-50) ~ 2e-22, far above float32 subnormals


@dataclass(frozen=True)
class DiodeModel:
    """Clamp-diode model.

    kind:        ``"ideal"`` (exact box constraint) or ``"shockley"``.
    is_A:        saturation current Is in amperes (Shockley only).
    n:           emission coefficient (dimensionless, Shockley only).
    temp_K:      junction temperature in kelvin; the thermal voltage is k*T/q.
    rail_offset_V: how far each hidden clamp rail sits inside its node's allowed side, in
                 volts (Shockley only; 0: rails at 0 V). A Shockley clamp holds its node about
                 one forward drop ``nVt ln(I / Is)`` beyond its rail (a few tenths of a volt
                 at µA currents), where the ideal diode holds it at the rail; rails at
                 ``+offset`` (excitatory units, ``v >= 0``) and ``-offset`` (inhibitory,
                 ``v <= 0``) bring the soft clamp back to about 0 V. In a circuit these are
                 two bias sources, one per polarity.
    """

    kind: str = "ideal"
    is_A: float = 1e-12
    n: float = 1.0
    temp_K: float = 300.15
    rail_offset_V: float = 0.0

    def __post_init__(self):
        if self.kind not in ("ideal", "shockley"):
            raise EpsimError(f"unknown diode model {self.kind!r}; choose 'ideal' or 'shockley'")
        if not (self.is_A > 0 and self.n > 0 and self.temp_K > 0):
            raise EpsimError("diode parameters Is, n and T must all be positive")
        if not np.isfinite(self.rail_offset_V) or self.rail_offset_V < 0:
            raise EpsimError(f"the clamp rail offset must be a finite voltage >= 0, got {self.rail_offset_V!r}")
        if self.kind == "ideal" and self.rail_offset_V != 0:
            raise EpsimError("a clamp rail offset compensates a Shockley diode's forward drop; "
                             "ideal diodes clamp at 0 V (use the shockley diode)")

    @property
    def vt_V(self) -> float:
        """Thermal voltage k*T/q in volts."""
        return BOLTZMANN_J_PER_K * self.temp_K / ELEMENTARY_CHARGE_C

    @property
    def n_vt_V(self) -> float:
        """Emission coefficient times thermal voltage, in volts."""
        return self.n * self.vt_V

    def to_dict(self) -> dict:
        """The fields as a dict; ``rail_offset_V`` only when set (descriptions of circuits
        with rails at 0 V read as they did before the field existed)."""
        d = asdict(self)
        if d["rail_offset_V"] == 0.0:
            del d["rail_offset_V"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiodeModel":
        return cls(**d)


# ---- numba (scalar) ------------------------------------------------------------------------
@nb.njit(cache=True, inline="always")
def clamp_current(v, lo, hi, is_n, nvt):
    """Current leaving a node at ``v`` through its Shockley clamp diodes, and d/dv.

    Scalars: ``v``, ``lo``, ``hi`` (V, ``-inf``/``+inf``: no diode), ``is_n``, ``nvt`` (V).
    Returns ``(i, di/dv)`` in ``is_n``'s unit (and per volt).
    """
    i = 0.0
    di = 0.0
    if hi < np.inf:
        e = np.exp(min((v - hi) / nvt, EXP_ARG_MAX))
        i += is_n * (e - 1.0)
        di += is_n * e / nvt
    if lo > -np.inf:
        e = np.exp(min((lo - v) / nvt, EXP_ARG_MAX))
        i -= is_n * (e - 1.0)
        di += is_n * e / nvt
    return i, di


@nb.njit(cache=True, inline="always")
def _exp_step(arg0, step):
    """``exp(arg0 + step) - exp(arg0)`` to the precision of the difference itself, even when
    ``|step|`` is far below rounding of ``arg0`` (arguments capped as :func:`clamp_current`)."""
    arg1 = arg0 + step
    if abs(step) < 1.0 and arg0 <= EXP_ARG_MAX and arg1 <= EXP_ARG_MAX:
        return np.exp(arg0) * np.expm1(step)
    return np.exp(min(arg1, EXP_ARG_MAX)) - np.exp(min(arg0, EXP_ARG_MAX))


@nb.njit(cache=True)
def clamp_current_delta(v0, dv, lo, hi, is_n, nvt):
    """Change of the clamp diodes' current from ``v0`` to ``v0 + dv``, and d/dv at ``v0 + dv``.

    ``clamp_current(v0 + dv)[0] - clamp_current(v0)[0]`` computed through ``expm1`` so that
    it keeps its own relative precision when ``|dv|`` is many orders below ``|v0|``, which the
    plain difference loses. Scalars as :func:`clamp_current`.
    """
    di_dv = 0.0
    i = 0.0
    if hi < np.inf:
        i += is_n * _exp_step((v0 - hi) / nvt, dv / nvt)
        di_dv += is_n * np.exp(min((v0 + dv - hi) / nvt, EXP_ARG_MAX)) / nvt
    if lo > -np.inf:
        i -= is_n * _exp_step((lo - v0) / nvt, -dv / nvt)
        di_dv += is_n * np.exp(min((lo - v0 - dv) / nvt, EXP_ARG_MAX)) / nvt
    return i, di_dv


@nb.njit(cache=True, inline="always")
def ideal_violation(r, v, lo, hi, a):
    """KCL violation at a node with ideal clamp diodes (scalars).

    ``r``: current leaving the node through everything but its diodes (``a v - c``);
    ``a``: its self-conductance. Inside the rails the diodes carry nothing (``|r|``); at a
    rail a diode can only supply the current of its own sign, and a node beyond its rail is
    infeasible (the excess voltage times ``a`` is added).
    """
    if v <= lo:
        return max(0.0, -r) + (lo - v) * a
    if v >= hi:
        return max(0.0, r) + (v - hi) * a
    return abs(r)


# ---- numpy (vectorised) --------------------------------------------------------------------
def shockley_array(vd, is_A, nvt):
    """Shockley current and conductance of junctions at voltages ``vd`` (V, any shape).

    ``is_A`` and ``nvt`` broadcast against ``vd``. Returns ``(Is (e - 1), Is e / nVt)``,
    ``e = exp(min(vd / nVt, EXP_ARG_MAX))``, in ``is_A``'s unit (and per volt).
    """
    e = np.exp(np.minimum(vd / nvt, EXP_ARG_MAX))
    return is_A * (e - 1.0), is_A * e / nvt


def clamp_current_array(v, lo, hi, is_n, nvt):
    """:func:`clamp_current` vectorised: ``v`` ``(..., n)``, rails ``(n,)``; ``(i, di/dv)``."""
    up = np.isfinite(hi)
    dn = np.isfinite(lo)
    i_hi, g_hi = shockley_array(v - np.where(up, hi, 0.0), is_n, nvt)
    i_lo, g_lo = shockley_array(np.where(dn, lo, 0.0) - v, is_n, nvt)
    i = np.where(up, i_hi, 0.0)
    di = np.where(up, g_hi, 0.0)
    i = np.where(dn, i - i_lo, i)
    di = np.where(dn, di + g_lo, di)
    return i, di


def clamp_cocontent_array(v, lo, hi, is_n, nvt) -> float:
    """Sum over all nodes of the clamp diodes' co-content ``P(v)`` (module docstring).

    ``v`` ``(..., n)`` (V), rails ``(n,)``; a float in ``is_n``'s unit times volts.
    """
    up = np.isfinite(hi)
    dn = np.isfinite(lo)
    a = np.minimum((v - np.where(up, hi, 0.0)) / nvt, EXP_ARG_MAX)
    b = np.minimum((np.where(dn, lo, 0.0) - v) / nvt, EXP_ARG_MAX)
    p = np.where(up, is_n * (nvt * np.exp(a) - v), 0.0) + np.where(dn, is_n * (nvt * np.exp(b) + v), 0.0)
    return float(p.sum())


def clamp_power_array(v, lo, hi, is_n, nvt):
    """Power dissipated in the clamp diodes, summed over the last axis.

    ``v`` ``(B, n)`` (V), rails ``(n,)``: ``(B,)`` sums of (voltage across each diode) x
    (its current), in ``is_n``'s unit times volts. ``expm1`` keeps the reverse currents
    exact to the last digit.
    """
    has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
    lo0, hi0 = np.where(has_lo, lo, 0.0), np.where(has_hi, hi, 0.0)
    i_lo = np.where(has_lo, is_n * np.expm1(np.minimum((lo0 - v) / nvt, EXP_ARG_MAX)), 0.0)
    i_hi = np.where(has_hi, is_n * np.expm1(np.minimum((v - hi0) / nvt, EXP_ARG_MAX)), 0.0)
    return ((lo0 - v) * i_lo + (v - hi0) * i_hi).sum(axis=-1)


def ideal_violation_array(r, v, lo, hi, a):
    """:func:`ideal_violation` vectorised: ``r``, ``v`` ``(..., n)``; rails and ``a`` broadcast."""
    res = np.abs(r)
    res = np.where(v <= lo, np.maximum(0.0, -r) + (lo - v) * a, res)
    res = np.where(v >= hi, np.maximum(0.0, r) + (v - hi) * a, res)
    return res


# ---- torch ---------------------------------------------------------------------------------
class TorchRails:
    """Clamp rails of one layer's nodes as tensors, precomputed for :func:`clamp_current_torch`.

    lo, hi: (n,) rails in V (``-inf``/``+inf``: no diode); lo0/hi0: the same with missing
    rails set to 0 V; has_lo/has_hi: (n,) 0/1 masks of the diodes present; lo_c/hi_c: the
    rails with missing ones at the dtype's extremes (for ``clamp(c/a, lo, hi)``).
    One-diode form: sign (+1 hi-rail diode, -1 lo-rail diode, 0 none or both), rail, has_any;
    ``single``: no node has two diodes. exp_cap / exp_floor: the exponent clamps of the dtype.
    """

    def __init__(self, lo, hi):
        import torch

        self.lo, self.hi = lo, hi
        self.has_lo = torch.isfinite(lo).to(lo.dtype)
        self.has_hi = torch.isfinite(hi).to(hi.dtype)
        self.lo0 = torch.where(self.has_lo > 0, lo, torch.zeros_like(lo))
        self.hi0 = torch.where(self.has_hi > 0, hi, torch.zeros_like(hi))
        # lowest / highest representable start for clamp(c/a, lo, hi)
        big = torch.finfo(lo.dtype).max
        self.lo_c = torch.where(self.has_lo > 0, lo, torch.full_like(lo, -big))
        self.hi_c = torch.where(self.has_hi > 0, hi, torch.full_like(hi, big))
        # one-diode form: sign +1 (hi-rail diode), -1 (lo-rail diode), 0 (none or both)
        self.has_any = torch.clamp(self.has_lo + self.has_hi, max=1.0)
        self.sign = self.has_hi - self.has_lo
        self.rail = self.has_hi * self.hi0 + self.has_lo * self.lo0
        self.single = not bool(((self.has_lo * self.has_hi) > 0).any())
        # exp() argument cap: numba's 300 in float64, below overflow in float32
        self.exp_cap = min(EXP_ARG_MAX, float(np.log(torch.finfo(lo.dtype).max)) - 4.0)
        # and a floor: exp() of large negative arguments is slow (underflow, subnormals) on
        # CPUs; below it the diode current is < Is*exp(floor), i.e. < 1e-30 of Is in
        # float64, far below the resolution of the other currents at such a node
        self.exp_floor = -EXP_ARG_FLOOR if lo.dtype == torch.float64 else -EXP_ARG_FLOOR_F32


def clamp_current_torch(v, rails: TorchRails, is_n, nvt):
    """:func:`clamp_current` on tensors: ``v`` (B, n) (V); returns ``(i, di/dv)`` (B, n).

    ``is_n``, ``nvt``: floats. Exponent arguments are clamped to
    ``[rails.exp_floor, rails.exp_cap]``; a layer without two-diode nodes takes one
    exponential per node.
    """
    import torch

    if rails.single:  # at most one diode per node: one exponential
        e = torch.exp(torch.clamp(rails.sign * (v - rails.rail) / nvt, min=rails.exp_floor,
                                  max=rails.exp_cap)) * rails.has_any
        return (is_n * rails.sign) * (e - rails.has_any), (is_n / nvt) * e
    e_hi = torch.exp(torch.clamp((v - rails.hi0) / nvt, min=rails.exp_floor, max=rails.exp_cap)) * rails.has_hi
    e_lo = torch.exp(torch.clamp((rails.lo0 - v) / nvt, min=rails.exp_floor, max=rails.exp_cap)) * rails.has_lo
    i = is_n * ((e_hi - rails.has_hi) - (e_lo - rails.has_lo))
    di = (is_n / nvt) * (e_hi + e_lo)
    return i, di


def ideal_violation_torch(r, v, lo, hi, a):
    """:func:`ideal_violation` on tensors: ``r``, ``v`` (B, n); ``lo``, ``hi``, ``a`` (n,)."""
    import torch

    lo0 = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    hi0 = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    below = torch.clamp(-r, min=0.0) + (lo0 - v) * a
    above = torch.clamp(r, min=0.0) + (v - hi0) * a
    return torch.where(v <= lo, below, torch.where(v >= hi, above, r.abs()))
