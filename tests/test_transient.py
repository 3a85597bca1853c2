"""Transient simulation with node capacitances: the final state is the DC equilibrium,
energy is conserved, and the waveforms match ngspice's .tran on the exported netlist."""

import numpy as np
import pytest

from epsim.circuit.compile import layer_node_names
from epsim.circuit.diodes import DiodeModel
from epsim.errors import EpsimError
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import build_mlp, leak_from_ratio, one_hot_targets
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.transient import Capacitances, node_capacitance_F, settling_times_s, simulate
from spice_marks import needs_ngspice

DC = NumbaSolver(tol_A=1e-14, max_iter=200000)


def digits_cnn(diode="shockley", seed=0):
    """The digits circuit CNN (``--model cnn`` on 8x8 images) with random conductances and
    biases, as trained ones have them."""
    net = build_circuit_model("cnn", (1, 8, 8), 10, diode=DiodeModel(kind=diode))
    rng = np.random.default_rng(seed)
    net.init_params(rng)
    net.b = [rng.normal(0.0, 0.5, b.shape) for b in net.b]
    return net, net.input_voltages(rng.uniform(0, 1, (3, 1, 8, 8)))


def amplified_mlp(diode="shockley", seed=1):
    net = build_mlp((1, 4, 4), hidden=(8, 6), num_classes=4, input_gain_V=2.0,
                    diode=DiodeModel(kind=diode), amp_gains=(4.0, 2.0))
    rng = np.random.default_rng(seed)
    net.init_params(rng)
    net.b = [rng.normal(0.0, 0.2, b.shape) * p for b, p in zip(net.b, net.layer_scale)]
    return net, net.input_voltages(rng.uniform(0, 1, (4, 1, 4, 4)))


def differential_mlp(diode="shockley", seed=2):
    """An amplified MLP whose hidden layers are presented as +A v and -A v (both halves of
    every crossbar conducting)."""
    net = build_circuit_model("test", (1, 4, 4), 4, arch="dense:8,dense:6,dense:4", input_gain_V=2.0,
                              diode=DiodeModel(kind=diode), amp_gains=[4.0, 2.0], differential=True)
    rng = np.random.default_rng(seed)
    net.w = [rng.uniform(0.0, 2.0, w.shape) / np.sqrt(c.fan_in) for c, w in zip(net.connections, net.w)]
    net.b = [rng.normal(0.0, 0.2, b.shape) * p for b, p in zip(net.b, net.layer_scale)]
    return net, net.input_voltages(rng.uniform(0, 1, (4, 1, 4, 4)))


def leaky_mlp(diode="shockley", seed=3):
    """An amplified MLP with a leak to 0 V on every free node."""
    net, v_in = amplified_mlp(diode, seed)
    net.leak = leak_from_ratio(net, 2.0)
    return net, v_in


@pytest.mark.parametrize("make", [digits_cnn, amplified_mlp, differential_mlp, leaky_mlp])
@pytest.mark.parametrize("diode", ["ideal", "shockley"])
def test_transient_settles_on_the_dc_equilibrium_and_conserves_energy(make, diode):
    net, v_in = make(diode)
    tr = simulate(net, v_in, t_stop_s=1e-6, dt_max_s=1e-8, tol_A=1e-13, lte_tol_V=1e-5)
    eq = DC.solve(DC.prepare(net, v_in), 0.0)
    for v, ref in zip(tr.v_final, eq.v_free):
        assert np.abs(v - ref).max() <= 1e-7
    e = tr.energy_J
    balance = e["sources"] - e["resistors"] - e["diodes"] - e["capacitors"]
    assert np.all(np.abs(balance) <= 1e-6 * np.abs(e["sources"]))
    # what flowed into the capacitors is what they store, up to the integrator's dissipation
    assert np.allclose(e["capacitors"], tr.stored_J, rtol=1e-2)
    settle, decide = settling_times_s(tr, eq.v_output, 1e-3)
    assert np.all(np.isfinite(settle)) and np.all(decide <= settle + 1e-18)


@pytest.mark.parametrize("make", [digits_cnn, differential_mlp])
def test_waveforms_do_not_depend_on_recording_the_powers(make):
    """A readout's transient (powers=False) has the waveforms of the full one, bit for bit,
    and records no powers."""
    net, v_in = make("shockley")
    kw = dict(t_stop_s=2e-7, dt_max_s=1e-8, tol_A=1e-12, lte_tol_V=1e-5)
    full, bare = simulate(net, v_in, **kw), simulate(net, v_in, powers=False, **kw)
    np.testing.assert_array_equal(full.t_s, bare.t_s)
    np.testing.assert_array_equal(full.v_out, bare.v_out)
    for l in full.probes:
        np.testing.assert_array_equal(full.probes[l], bare.probes[l])
    assert bare.power_W is None and bare.energy_J is None and bare.stored_J is None


def test_nudged_phase_from_the_free_state_conserves_energy():
    net, v_in = amplified_mlp()
    free = DC.solve(DC.prepare(net, v_in), 0.0)
    target = one_hot_targets(np.arange(len(v_in)) % net.num_outputs, net.num_outputs)
    for beta in (0.5, -0.5):
        tr = simulate(net, v_in, t_stop_s=1e-6, dt_max_s=1e-8, tol_A=1e-13, init=free.v_free,
                      beta=beta, target_V=target)
        ref = DC.solve(DC.prepare(net, v_in), beta, target, init=free.v_free)
        assert np.abs(tr.v_final[-1] - ref.v_output).max() <= 1e-7
        e = tr.energy_J
        balance = e["sources"] - e["resistors"] - e["diodes"] - e["capacitors"]
        assert np.all(np.abs(balance) <= 1e-6 * np.abs(e["sources"]).max())


def test_numerical_dissipation_shrinks_with_the_step_tolerance():
    net, v_in = digits_cnn()
    gaps = []
    for lte in (1e-3, 1e-5):
        tr = simulate(net, v_in, t_stop_s=1e-7, dt_max_s=2e-9, tol_A=1e-13, lte_tol_V=lte)
        gaps.append(np.abs(tr.energy_J["capacitors"] - tr.stored_J).max())
    assert gaps[1] < gaps[0] / 5


def test_capacitances_count_the_cells_on_each_line():
    net = build_mlp((1, 2, 2), hidden=(3,), num_classes=2)
    caps = node_capacitance_F(net, Capacitances(cell_F=1e-16, node_F=1e-14))
    assert np.allclose(caps[0], 1e-14 + 1e-16 * (8 + 2))  # 8 input lines + 2 output lines
    assert np.allclose(caps[1], 1e-14 + 1e-16 * 3)
    with pytest.raises(EpsimError):
        Capacitances(cell_F=-1.0)


@needs_ngspice
def test_waveforms_match_ngspice_tran(tmp_path):
    """The digits circuit CNN with Shockley diodes, 3 inputs: every node's waveform against
    ngspice's Gear integration of the exported netlist with the same capacitors."""
    from epsim.spice.transient import run_ngspice_tran, tran_netlist_text

    net, v_in = digits_cnn(seed=3)
    caps = Capacitances()
    t_stop, dt = 2e-8, 1e-10
    tr = simulate(net, v_in, caps=caps, t_stop_s=t_stop, dt_max_s=dt, tol_A=1e-14, lte_tol_V=1e-5,
                  probe_nodes=10 ** 6)
    names = layer_node_names(net)[1:]
    worst = 0.0
    for b in range(len(v_in)):
        path = tmp_path / f"tran{b}.cir"
        path.write_text(tran_netlist_text(net, v_in[b], caps, t_stop_s=t_stop, dt_s=dt, max_step_s=dt / 4,
                                          netlist_dir=tmp_path))
        t, waves = run_ngspice_tran(path)
        inside = tr.t_s >= t[0]
        for l, layer in enumerate(names, start=1):
            for k, n in enumerate(layer):
                ref = np.interp(tr.t_s[inside], t, waves[n])
                worst = max(worst, np.abs(ref - tr.probes[l][inside, b, k]).max())
    assert worst <= 1e-4, f"max |V_numba - V_ngspice| over the waveforms = {worst:.3g} V"
