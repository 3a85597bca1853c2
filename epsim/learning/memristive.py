"""Memristive (RRAM/PCM) device models of the programmable conductances: ranges, levels,
nonlinear asymmetric pulse response, write and read noise, device-to-device variation.

A :class:`DeviceModel` holds the parameters of a technology; :data:`PRESETS` names
``ideal`` (exact updates clipped to the network's range: today's behaviour, bit for bit),
``rram`` and ``pcm``. A :class:`DeviceArray` is one chip: the model applied to every
conductance of a network, with its own device-to-device draws and random streams.

Update model (per device, in the normalised state ``x = (G - Gmin_d) / (Gmax_d - Gmin_d)``)
----------------------------------------------------------------------------------------
The optimiser asks for a change ``dw`` (in ``g_unit``). The periphery turns it into an
integer number of identical programming pulses ``n = |dw| / dG_pulse`` with
``dG_pulse = (Gmax - Gmin) / levels`` (levels of the direction of the change), rounded
stochastically (``floor`` plus one with the probability of the remainder, as stochastic
pulse trains do; Gokmen & Vlasov 2016) or to the nearest integer. The periphery does not
know each device's quirks: the pulse count uses the nominal step. A device then responds
with the exponential pulse-response model of NeuroSim (Chen, Peng & Yu 2017/2018),
``G(P) = Gmin + B (1 - exp(-P/A))``, i.e. per pulse::

    potentiation:  x <- x + (b_up - x) * (1 - exp(-nu_up * s_up / levels_up)),
    depression:    x <- x - (b_dn - (1 - x)) * (1 - exp(-nu_dn * s_dn / levels_dn)),
    b = 1 / (1 - exp(-nu)),

so that ``levels`` nominal pulses sweep the whole range from one bound to the other. The
step shrinks as the device approaches the bound it is driven to (soft bounds): ``nu`` is
the nonlinearity, the last step of a full sweep is ``exp(-nu)`` times the first (``nu = 0``:
constant steps, a linear device). Different ``nu``/``levels`` up and down make the
response sign-asymmetric. ``n`` pulses compose in closed form
(``b - x_n = (b - x_0) exp(-nu s n / levels)``). Every pulse adds cycle-to-cycle write noise
of standard deviation ``write_noise * (Gmax_d - Gmin_d)`` (NeuroSim's convention), i.e.
``write_noise * sqrt(n)`` over ``n`` pulses; the result is clipped to the device's own range
(hard bounds: a device never leaves ``[Gmin_d, Gmax_d]``). With ``levels = 0`` updates are
exact (continuous) and only clipped.

Device-to-device variation (drawn once per device from the run's seed): ``Gmin_d``,
``Gmax_d`` = nominal x ``(1 + d2d_range * xi)``; step scale ``s_up``, ``s_dn`` =
``1 + d2d_step * xi`` (independent, so each device has its own up/down imbalance);
``nu_d = max(0, nu + d2d_nonlinearity * xi)``; ``xi`` standard normal truncated to ±3.

Read noise: every read of the crossbar (every prepared solve: one batch of samples and its
EP phases) sees ``G (1 + read_noise * xi)``, a fresh draw per device and read, clipped at 0.

Initial programming: the initial conductances are written from the reset state
(``Gmin_d``) by the integer number of potentiation pulses that comes closest, with their
write noise, so a run starts on the device's levels.

Circuit scale: a preset with its own range sets the network's ``Gmin``/``Gmax`` and
``g_unit = Gmax / G_MAX_UNITS`` (Gmax is ``G_MAX_UNITS`` = 2 normalised units). Dividing every
conductance and current by one constant leaves all voltages unchanged, so this choice only
fixes what the learning rate, biases and nudging mean physically; 2 units covers the
largest conductances (~1.5 units) a digits circuit reaches with the ideal device.

Limitations: a tied convolution parameter is one device (its replicas at every position are
programmed identically and share one device's variation and read noise); retention and
conductance drift (e.g. PCM's ``G ~ t^-0.05..0.1``) are not modelled.

Determinism: d2d draws come from ``default_rng([seed, D2D_STREAM])``; write noise and pulse
rounding from ``default_rng([seed, WRITE_STREAM])``; read noise from
``default_rng([seed, READ_STREAM, rank])``. The write and read generators' states are saved
in checkpoints (:meth:`DeviceArray.state`), so an interrupted run resumes exactly.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..errors import EpsimError

G_MAX_UNITS = 2.0
D2D_STREAM, WRITE_STREAM, READ_STREAM = 0xD2D, 0x3817E, 0x2EAD
TRUNCATE_SIGMAS = 3.0


@dataclass(frozen=True)
class DeviceModel:
    """Parameters of a programmable-conductance technology (see the module docstring).

    name: preset name. g_min_S / g_max_S: nominal conductance range (S); None keeps the
    network's own range (``--g-min``/``--g-max``). levels_up / levels_down: pulses that sweep
    the whole range up / down (0: continuous, exact updates). nonlinearity_up / _down:
    ``nu`` of the pulse response (0: linear). write_noise: per-pulse std as a fraction of the
    range. read_noise: relative std of every read. d2d_range, d2d_step: relative std of each
    device's bounds and step size; d2d_nonlinearity: std of each device's ``nu``.
    stochastic_rounding: pulse counts rounded stochastically (else to the nearest integer).
    """

    name: str = "ideal"
    g_min_S: float | None = None
    g_max_S: float | None = None
    levels_up: int = 0
    levels_down: int = 0
    nonlinearity_up: float = 0.0
    nonlinearity_down: float = 0.0
    write_noise: float = 0.0
    read_noise: float = 0.0
    d2d_range: float = 0.0
    d2d_step: float = 0.0
    d2d_nonlinearity: float = 0.0
    stochastic_rounding: bool = True

    def __post_init__(self):
        def bad(msg):
            raise EpsimError(f"device model {self.name}: {msg}")

        if (self.g_min_S is None) != (self.g_max_S is None):
            bad("give both g_min_S and g_max_S or neither")
        if self.g_max_S is not None and not (0 <= self.g_min_S < self.g_max_S and np.isfinite(self.g_max_S)):
            bad("need 0 <= g_min_S < g_max_S (siemens)")
        for f in ("levels_up", "levels_down"):
            if int(getattr(self, f)) != getattr(self, f) or getattr(self, f) < 0:
                bad(f"{f} must be a non-negative integer")
        if (self.levels_up == 0) != (self.levels_down == 0):
            bad("levels_up and levels_down must both be 0 (continuous) or both positive")
        for f in ("nonlinearity_up", "nonlinearity_down", "write_noise", "read_noise", "d2d_range",
                  "d2d_step", "d2d_nonlinearity"):
            v = getattr(self, f)
            if not (np.isfinite(v) and v >= 0):
                bad(f"{f} must be a non-negative number")
        if self.levels_up == 0 and (self.nonlinearity_up or self.nonlinearity_down or self.write_noise
                                    or self.d2d_step or self.d2d_nonlinearity):
            bad("a continuous device (levels 0) has no pulse response: nonlinearity, write noise "
                "and step variation need levels > 0")
        if self.d2d_range * TRUNCATE_SIGMAS >= 0.5:
            bad("d2d_range must be below 1/6 (device bounds could cross)")
        if self.g_max_S is not None and self.g_min_S * (1 + TRUNCATE_SIGMAS * self.d2d_range) >= \
                self.g_max_S * (1 - TRUNCATE_SIGMAS * self.d2d_range):
            bad("on/off ratio too small for this d2d_range (device bounds could cross)")

    @property
    def is_ideal(self) -> bool:
        """True when the device changes nothing: exact updates, no noise, no variation."""
        return (self.levels_up == 0 and self.read_noise == 0 and self.d2d_range == 0)

    def circuit_ranges(self, ranges):
        """The network's :class:`CircuitRanges` for this device (``ranges`` if it has none)."""
        if self.g_max_S is None:
            return ranges
        from ..models.resistive import CircuitRanges

        return CircuitRanges(self.g_max_S / G_MAX_UNITS, self.g_min_S, self.g_max_S)

    def spec(self) -> str:
        """``name[:field=value,...]`` that rebuilds this model with :func:`get_device_model`."""
        base = PRESETS.get(self.name)
        if base is None:
            base = DeviceModel(name=self.name)
        diff = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                if f.name != "name" and getattr(self, f.name) != getattr(base, f.name)]
        return self.name + (":" + ",".join(diff) if diff else "")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "ideal": DeviceModel(name="ideal"),
    # Analog TaOx/HfOx RRAM as tabulated by S. Yu, "Neuro-inspired computing with emerging
    # nonvolatile memory", Proc. IEEE 106 (2018) and the NeuroSim+ framework (P.-Y. Chen,
    # X. Peng, S. Yu, IEDM 2017): see the docstring of rram_preset for every value's source.
    "rram": DeviceModel(
        name="rram", g_min_S=1e-6, g_max_S=1e-5, levels_up=128, levels_down=128,
        nonlinearity_up=0.1, nonlinearity_down=1.0, write_noise=0.037, read_noise=0.02,
        d2d_range=0.1, d2d_step=0.3, d2d_nonlinearity=0.1),
    # Doped-GST mushroom-cell phase-change memory: see the docstring of pcm_preset.
    "pcm": DeviceModel(
        name="pcm", g_min_S=2.5e-7, g_max_S=2.5e-5, levels_up=20, levels_down=1,
        nonlinearity_up=2.0, nonlinearity_down=0.0, write_noise=0.05, read_noise=0.02,
        d2d_range=0.1, d2d_step=0.3, d2d_nonlinearity=0.2),
}


def rram_preset() -> DeviceModel:
    """The ``rram`` preset: an analog TaOx/HfOx bilayer RRAM (1T1R) synapse.

    Values and sources (device table of S. Yu, Proc. IEEE 106(2), 260-285, 2018, the
    device benchmark of NeuroSim+, P.-Y. Chen, X. Peng & S. Yu, IEDM 2017; TaOx/HfOx row):

    - ``g_max_S = 10 uS``: on-state resistance R_on = 100 kOhm (table).
    - ``g_min_S = 1 uS``: on/off ratio 10 (table).
    - ``levels_up = levels_down = 128``: 128 conductance levels per direction (table).
    - ``nonlinearity_up = 0.1``, ``nonlinearity_down = 1.0``: the table reports an almost
      linear potentiation (NeuroSim nonlinearity label 0.04) and a moderately nonlinear
      depression (label -0.63); these ``nu`` (last/first step = e^-nu: 0.90 and 0.37) are a
      representative translation of those labels into this model, not an exact mapping.
    - ``write_noise = 0.037``: cycle-to-cycle variation 3.7 % of the conductance range per
      pulse (table; NeuroSim's convention).
    - ``read_noise = 0.02``: random-telegraph read noise of HfOx RRAM spans from below 1 %
      to above 10 % of the resistance, larger in more resistive states (Ambrogio et al., IEEE
      TED 61(8), 2014, "Statistical fluctuations in HfOx resistive-switching memory,
      Part II"); 2 % is a representative choice within that range.
    - ``d2d_step = 0.3``: 30 % device-to-device spread of the update step, the tolerance
      specification of Gokmen & Vlasov (Front. Neurosci. 10:333, 2016) and the default of
      IBM's aihwkit pulsed devices; representative.
    - ``d2d_range = 0.1``, ``d2d_nonlinearity = 0.1``: 10 % spread of each device's bounds
      and a 0.1 spread of its nonlinearity; representative choices (array-level spreads of
      RRAM resistance states of ~10-30 % are commonly reported), not a single source.
    """
    return PRESETS["rram"]


def pcm_preset() -> DeviceModel:
    """The ``pcm`` preset: a doped-Ge2Sb2Te5 mushroom-cell phase-change memory synapse.

    - ``g_max_S = 25 uS``: the conductance range of the PCM devices of Joshi et al.,
      "Accurate deep neural network inference using computational phase-change memory",
      Nat. Commun. 11:2473 (2020) (G_max = 25 uS).
    - ``g_min_S = 0.25 uS``: on/off ratio 100, a representative value within the 10^2-10^3
      reported for PCM (Burr et al., "Neuromorphic computing using non-volatile memory",
      Adv. Phys. X 2(1), 2017).
    - ``levels_up = 20``, ``nonlinearity_up = 2.0``: gradual crystallisation (partial SET)
      saturates within ~20 identical pulses with steps that shrink strongly as the
      conductance grows (Nandakumar et al., "A phase-change memory model for neuromorphic
      computing", J. Appl. Phys. 124, 152135, 2018); ``nu = 2`` (last step ~14 % of the
      first) is a representative choice.
    - ``levels_down = 1``: depression is an abrupt melt-quench RESET back to the amorphous
      state, not gradual (Burr et al., IEEE TED 62(11), 2015, which therefore uses two
      devices per weight and SET-only updates); here one device per conductance, so any
      depression pulse resets it.
    - ``write_noise = 0.05``: the increments of partial SET are highly stochastic, their
      spread comparable to their mean (Nandakumar et al. 2018); 5 % of the range per pulse,
      about half the first step, is a representative choice.
    - ``read_noise = 0.02``: 1/f read noise of a few percent of the conductance (Joshi et al.
      2020; Nandakumar et al. 2018); 2 % is representative.
    - ``d2d_step = 0.3``, ``d2d_range = 0.1``, ``d2d_nonlinearity = 0.2``: representative
      device-to-device spreads (as for ``rram``); not from a single source.

    Not modelled: conductance drift ``G ~ t^-nu_drift`` (nu_drift ~ 0.05 in Joshi et al.).
    """
    return PRESETS["pcm"]


DEVICE_MODELS = tuple(PRESETS)


def get_device_model(spec: str) -> DeviceModel:
    """Device model from ``NAME`` or ``NAME:field=value,...`` (e.g. ``rram:read_noise=0``)."""
    if isinstance(spec, DeviceModel):
        return spec
    name, _, overrides = str(spec).partition(":")
    name = name.strip().lower()
    if name not in PRESETS:
        raise EpsimError(f"unknown device model {name!r}; choose from {', '.join(PRESETS)} "
                         "(optionally NAME:field=value,...)")
    model = PRESETS[name]
    if not overrides.strip():
        return model
    types = {f.name: f.type for f in fields(DeviceModel)}
    changes = {}
    for item in overrides.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in types or key == "name":
            raise EpsimError(f"bad device override {item.strip()!r} in {spec!r}; fields: "
                             + ", ".join(k for k in types if k != "name"))
        value = value.strip()
        try:
            if key in ("levels_up", "levels_down"):
                changes[key] = int(value)
            elif key == "stochastic_rounding":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                changes[key] = value.lower() in ("true", "1")
            elif key in ("g_min_S", "g_max_S") and value.lower() == "none":
                changes[key] = None
            else:
                changes[key] = float(value)
        except ValueError:
            raise EpsimError(f"device override {key}={value!r}: not a valid value") from None
    return replace(model, **changes)


# ---- one chip ---------------------------------------------------------------------------
@dataclass
class _LayerDevices:
    lo: np.ndarray  # per-device bounds (normalised conductance)
    hi: np.ndarray
    s_up: np.ndarray
    s_dn: np.ndarray
    nu_up: np.ndarray
    nu_dn: np.ndarray


def _truncated_normal(rng, shape):
    return np.clip(rng.standard_normal(shape), -TRUNCATE_SIGMAS, TRUNCATE_SIGMAS)


def pulse_response(x, n, nu, s, levels):
    """State after ``n`` potentiation pulses from ``x`` (arrays; noise-free, unclipped).

    ``x + (b - x) (1 - exp(-nu s n / levels))`` with ``b = 1/(1 - exp(-nu))``; ``nu -> 0``
    gives the linear response ``x + s n / levels``. Depression is the same on ``1 - x``.
    """
    x, n, nu, s = np.broadcast_arrays(np.asarray(x, float), np.asarray(n, float),
                                      np.asarray(nu, float), np.asarray(s, float))
    lin = nu < 1e-9
    nu_safe = np.where(lin, 1.0, nu)
    b = -1.0 / np.expm1(-nu_safe)
    step = (b - x) * -np.expm1(-nu_safe * s * n / levels)
    return np.where(lin, x + s * n / levels, x + step)


def pulses_from_reset(x, nu, s, levels):
    """Real number of potentiation pulses that takes a device from 0 to state ``x``."""
    lin = nu < 1e-9
    nu_safe = np.where(lin, 1.0, nu)
    b = -1.0 / np.expm1(-nu_safe)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = -levels / (nu_safe * s) * np.log1p(-np.minimum(x / b, 1.0 - 1e-12))
    return np.where(lin, x * levels / s, p)


class DeviceArray:
    """The device model applied to every conductance of ``net`` (one simulated chip).

    Args:
        model: the :class:`DeviceModel`. net: the network (its ``w`` shapes and range).
        seed: the run's seed. rank: process rank of a data-parallel run, or any integer
            selecting another independent read-noise stream (the other draws do not depend
            on it).
    """

    def __init__(self, model: DeviceModel, net, seed: int, rank: int = 0):
        self.model = model
        self.is_ideal = model.is_ideal
        self.seed = int(seed)
        self.lo_nom, self.hi_nom = net.w_bounds
        self.write_rng = np.random.default_rng([self.seed, WRITE_STREAM])
        self.read_rng = np.random.default_rng([self.seed, READ_STREAM, int(rank)])
        self.layers = []
        if self.is_ideal:
            return
        m = model
        rng = np.random.default_rng([self.seed, D2D_STREAM])
        for w in net.w:
            shape = w.shape
            lo = self.lo_nom * (1.0 + m.d2d_range * _truncated_normal(rng, shape))
            hi = self.hi_nom * (1.0 + m.d2d_range * _truncated_normal(rng, shape))
            s_up = np.maximum(1.0 + m.d2d_step * _truncated_normal(rng, shape), 0.05)
            s_dn = np.maximum(1.0 + m.d2d_step * _truncated_normal(rng, shape), 0.05)
            nu_up = np.maximum(m.nonlinearity_up + m.d2d_nonlinearity * _truncated_normal(rng, shape), 0.0)
            nu_dn = np.maximum(m.nonlinearity_down + m.d2d_nonlinearity * _truncated_normal(rng, shape), 0.0)
            self.layers.append(_LayerDevices(lo, hi, s_up, s_dn, nu_up, nu_dn))

    # ---- bounds ---------------------------------------------------------------------
    def bounds(self, l: int):
        """``(lo, hi)`` normalised per-device range of connection ``l`` (arrays or scalars)."""
        if self.is_ideal or not self.layers:
            return self.lo_nom, self.hi_nom
        d = self.layers[l]
        return d.lo, d.hi

    # ---- writes ---------------------------------------------------------------------
    def program(self, net):
        """Write the network's initial conductances onto the devices (in place)."""
        if self.is_ideal:
            return
        m = self.model
        for l, w in enumerate(net.w):
            d = self.layers[l]
            span = d.hi - d.lo
            x = np.clip((w - d.lo) / span, 0.0, 1.0)
            if m.levels_up == 0:
                np.clip(w, d.lo, d.hi, out=w)
                continue
            n = np.rint(pulses_from_reset(x, d.nu_up, d.s_up, m.levels_up))
            x = pulse_response(0.0, n, d.nu_up, d.s_up, m.levels_up)
            x = x + m.write_noise * np.sqrt(n) * self.write_rng.standard_normal(w.shape)
            w[...] = np.clip(d.lo + np.clip(x, 0.0, 1.0) * span, d.lo, d.hi)

    def pulse_counts(self, dw, levels_up, levels_down, u):
        """Integer pulse counts ``(n_up, n_down)`` for requested changes ``dw`` (normalised).

        ``u``: uniforms for stochastic rounding (same shape as ``dw``).
        """
        span_nom = self.hi_nom - self.lo_nom
        n_real = np.where(dw > 0, dw * (levels_up / span_nom), -dw * (levels_down / span_nom))
        if self.model.stochastic_rounding:
            base = np.floor(n_real)
            n = base + (u < (n_real - base))
        else:
            n = np.rint(n_real)
        return np.where(dw > 0, n, 0.0), np.where(dw < 0, n, 0.0)

    def update(self, l: int, w: np.ndarray, dw: np.ndarray):
        """Apply the requested change ``dw`` to the conductances ``w`` of connection ``l`` in place."""
        m = self.model
        if self.is_ideal:
            w += dw
            np.clip(w, self.lo_nom, self.hi_nom, out=w)
            return
        d = self.layers[l]
        span = d.hi - d.lo
        if m.levels_up == 0:
            np.clip(w + dw, d.lo, d.hi, out=w)
            return
        u = self.write_rng.random(w.shape)
        xi = self.write_rng.standard_normal(w.shape)
        n_up, n_dn = self.pulse_counts(dw, m.levels_up, m.levels_down, u)
        x = np.clip((w - d.lo) / span, 0.0, 1.0)
        x_up = pulse_response(x, n_up, d.nu_up, d.s_up, m.levels_up)
        x_dn = 1.0 - pulse_response(1.0 - x, n_dn, d.nu_dn, d.s_dn, m.levels_down)
        x_new = np.where(n_up > 0, x_up, np.where(n_dn > 0, x_dn, x))
        x_new = x_new + m.write_noise * np.sqrt(n_up + n_dn) * xi
        changed = (n_up + n_dn) > 0
        w[...] = np.where(changed, np.clip(d.lo + np.clip(x_new, 0.0, 1.0) * span, d.lo, d.hi), w)

    # ---- reads ----------------------------------------------------------------------
    def read(self, w_list) -> list:
        """Conductances as one read sees them: fresh read noise per device, clipped at 0."""
        sigma = self.model.read_noise
        if sigma == 0:
            return list(w_list)
        return [np.maximum(w * (1.0 + sigma * self.read_rng.standard_normal(w.shape)), 0.0)
                for w in w_list]

    def wrap_solver(self, solver):
        """``solver`` itself, or one that reads the conductances through the read noise."""
        if self.model.read_noise == 0:
            return solver
        return ReadNoiseSolver(solver, self)

    # ---- checkpoints ----------------------------------------------------------------
    def state(self) -> dict:
        """Random-stream states (JSON strings) and the model spec, for checkpoints."""
        return {"spec": self.model.spec(),
                "write_rng": json.dumps(self.write_rng.bit_generator.state),
                "read_rng": json.dumps(self.read_rng.bit_generator.state)}

    def load_state(self, state):
        """Restore :meth:`state` (None: a checkpoint written before device models: nothing)."""
        if not state:
            return
        if state.get("spec") != self.model.spec():
            raise EpsimError(f"checkpoint was trained with device model {state.get('spec')!r}, "
                             f"not {self.model.spec()!r}")
        self.write_rng.bit_generator.state = json.loads(state["write_rng"])
        self.read_rng.bit_generator.state = json.loads(state["read_rng"])


class ReadNoiseSolver:
    """A solver whose every ``prepare`` reads the conductances through the read noise.

    One read per prepared problem: the samples of a batch and the EP phases solved on it
    share the draw (the noise is slow compared with one batch's phases). Everything else is
    the wrapped solver's.
    """

    def __init__(self, base, devices: DeviceArray):
        self.base = base
        self.devices = devices

    def prepare(self, net, v_input):
        noisy = copy.copy(net)
        noisy.w = self.devices.read(net.w)
        return self.base.prepare(noisy, v_input)

    def solve(self, prepared, *args, **kwargs):
        return self.base.solve(prepared, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.base, name)
