"""The clamp-diode law of :mod:`epsim.circuit.diodes`: its numba, numpy and torch forms agree
with each other, ``di/dv`` is the current's derivative and the co-content's derivative is the
current (central finite differences)."""
import numpy as np
import pytest
import torch

from epsim.circuit.diodes import (EXP_ARG_FLOOR, DiodeModel, TorchRails, clamp_cocontent_array,
                                  clamp_current, clamp_current_array, clamp_current_torch,
                                  clamp_power_array, ideal_violation, ideal_violation_array,
                                  ideal_violation_torch, shockley_array)
from epsim.errors import EpsimError

INF = np.inf
NVT = DiodeModel("shockley", n=1.3).n_vt_V
IS_N = 1e-6  # Is / g_unit (V): the normalised saturation current of the solvers
# per node: lo diode only, hi diode only, none, both, both (narrow box)
LO = np.array([0.0, -INF, -INF, -0.4, -0.05])
HI = np.array([INF, 0.0, INF, 0.5, 0.05])


def voltages(n=400, seed=0):
    """``(n, 5)`` node voltages from deep reverse bias to ~0.5 V forward on every diode."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (n, LO.size))


def scalar_current(v):
    """The numba form node by node: ``(i, di/dv)`` of the same shape as ``v``."""
    i, di = np.empty_like(v), np.empty_like(v)
    for idx in np.ndindex(v.shape):
        k = idx[-1]
        i[idx], di[idx] = clamp_current(v[idx], LO[k], HI[k], IS_N, NVT)
    return i, di


def torch_current(v, rails_lo=LO, rails_hi=HI):
    rails = TorchRails(torch.tensor(rails_lo), torch.tensor(rails_hi))
    i, di = clamp_current_torch(torch.tensor(v), rails, IS_N, NVT)
    return i.numpy(), di.numpy()


def test_forms_agree():
    v = voltages()
    i_nb, di_nb = scalar_current(v)
    i_np, di_np = clamp_current_array(v, LO, HI, IS_N, NVT)
    # the same operations in the same order; numpy's and numba's exp() may differ in an ulp
    np.testing.assert_allclose(i_np, i_nb, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(di_np, di_nb, rtol=1e-14, atol=1e-300)
    # torch floors exponent arguments at -EXP_ARG_FLOOR (differences below Is * exp(-70)) and
    # sums a two-diode node's terms in another order (round-off of the order of eps * Is)
    atol = IS_N * (np.exp(-EXP_ARG_FLOOR) + 1e-14)
    for lo, hi in ((LO, HI), (LO[:3], HI[:3])):  # two-diode nodes, and the one-diode path
        n = lo.size
        i_t, di_t = torch_current(v[:, :n], lo, hi)
        np.testing.assert_allclose(i_t, i_np[:, :n], rtol=1e-12, atol=atol)
        np.testing.assert_allclose(di_t, di_np[:, :n], rtol=1e-12, atol=atol / NVT)


def test_current_law():
    """Shockley's law on each rail: forward current from the node to ``hi``, from ``lo`` in."""
    v = np.array([[0.3, 0.3, 0.3, 0.3, 0.3]])
    i, di = clamp_current_array(v, LO, HI, IS_N, NVT)
    assert i[0, 0] == pytest.approx(-IS_N * np.expm1(-0.3 / NVT), rel=1e-12)  # lo diode reverse
    assert i[0, 1] == pytest.approx(IS_N * np.expm1(0.3 / NVT), rel=1e-12)  # hi diode forward
    assert i[0, 2] == 0.0 and di[0, 2] == 0.0
    i_j, g_j = shockley_array(np.array([0.3]), IS_N, NVT)
    assert i_j[0] == i[0, 1] and g_j[0] == di[0, 1]


def test_derivative_of_current():
    v = voltages(100)
    h = 1e-6
    i_p, _ = clamp_current_array(v + h, LO, HI, IS_N, NVT)
    i_m, _ = clamp_current_array(v - h, LO, HI, IS_N, NVT)
    _, di = clamp_current_array(v, LO, HI, IS_N, NVT)
    np.testing.assert_allclose((i_p - i_m) / (2 * h), di, rtol=1e-6, atol=1e-12)


def test_cocontent_derivative_is_current():
    v = voltages(60)
    h = 1e-6
    i, _ = clamp_current_array(v, LO, HI, IS_N, NVT)
    for b, k in np.ndindex(v.shape):
        lo, hi = LO[k:k + 1], HI[k:k + 1]  # one node: its own co-content

        def p(x):
            return clamp_cocontent_array(np.array([x]), lo, hi, IS_N, NVT)

        dp = (p(v[b, k] + h) - p(v[b, k] - h)) / (2 * h)
        tol = 1e-6 * abs(i[b, k]) + 1e-9 * abs(p(v[b, k])) / NVT + 1e-15
        assert abs(dp - i[b, k]) <= tol, (b, k, dp, i[b, k])


def test_power_is_voltage_times_current():
    v = voltages(50)
    hi0, lo0 = np.where(np.isfinite(HI), HI, 0.0), np.where(np.isfinite(LO), LO, 0.0)
    i_hi = np.where(np.isfinite(HI), IS_N * np.expm1((v - hi0) / NVT), 0.0)
    i_lo = np.where(np.isfinite(LO), IS_N * np.expm1((lo0 - v) / NVT), 0.0)
    expected = ((v - hi0) * i_hi + (lo0 - v) * i_lo).sum(axis=1)
    np.testing.assert_allclose(clamp_power_array(v, LO, HI, IS_N, NVT), expected, rtol=1e-12)
    assert np.all(clamp_power_array(v, LO, HI, IS_N, NVT) >= 0)  # diodes only dissipate


def test_exponent_cap():
    """Far beyond the rail the exponent is capped: finite current and conductance."""
    v = np.array([[-50.0, 50.0, 0.0, 50.0, -50.0]])
    i, di = clamp_current_array(v, LO, HI, IS_N, NVT)
    assert np.all(np.isfinite(i)) and np.all(np.isfinite(di))
    i_t, _ = torch_current(v)
    np.testing.assert_allclose(i_t, i, rtol=1e-12)


def test_ideal_violation_forms_agree():
    rng = np.random.default_rng(1)
    v = rng.uniform(-1.0, 1.0, (300, LO.size))
    v[::3] = np.clip(v[::3], LO, HI)  # many nodes exactly at a rail
    r = rng.normal(size=v.shape)
    a = rng.uniform(0.5, 3.0, LO.size)
    ref = np.empty_like(v)
    for b, k in np.ndindex(v.shape):
        ref[b, k] = ideal_violation(r[b, k], v[b, k], LO[k], HI[k], a[k])
    np.testing.assert_array_equal(ideal_violation_array(r, v, LO, HI, a), ref)
    out_t = ideal_violation_torch(*(torch.tensor(x) for x in (r, v, LO, HI, a))).numpy()
    np.testing.assert_array_equal(out_t, ref)
    inside = (v > LO) & (v < HI)
    np.testing.assert_array_equal(ref[inside], np.abs(r[inside]))
    at_lo = v == LO  # the lo diode supplies any current into the node, draws none
    np.testing.assert_array_equal(ref[at_lo], np.maximum(0.0, -r[at_lo]))


def test_model_parameters():
    d = DiodeModel("shockley", is_A=2e-14, n=1.5, temp_K=300.0)
    assert d.n_vt_V == pytest.approx(1.5 * 0.025852, rel=1e-4)
    assert DiodeModel.from_dict(d.to_dict()) == d
    with pytest.raises(EpsimError):
        DiodeModel("schottky")
    with pytest.raises(EpsimError):
        DiodeModel("shockley", is_A=0.0)
