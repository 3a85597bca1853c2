"""The circuit model's equations on torch: exact block coordinate descent, CPU or CUDA.

Same circuit, same algorithm and same stopping rule as :mod:`epsim.solvers.numba_solver`,
vectorised with torch ops instead of per-node loops:

- dense crossbars: ``drive_out = v_in @ w``, ``drive_in = v_out @ w.T``;
- tied conv crossbars (stride ``s``, zero padding ``p``): ``drive_out = conv2d(v_in, w,
  stride=s, padding=p)`` (the pad sits at 0 V and drives nothing), ``drive_in =
  conv_transpose2d(v_out, w, stride=s, padding=p, output_padding=q)`` with
  ``q = H_in - ((H_out - 1) * s - 2 p + k)`` (the input rows/columns the last window does
  not reach), so the transpose returns exactly the input grid (the current into the pad,
  a fixed rail, is dropped);
- self-conductances (degrees) are the drives of all-ones states; on the output side of a
  padded conv the all-ones state covers the pad too (its conductances to the rail load
  every border node with the whole kernel).

Given its neighbours, every node's KCL is the 1-D equation ``a v - c + i_diode(v) = 0``
(normalised units: conductances ``/ g_unit``, currents ``/ g_unit``, voltages in V; the
diode law is :mod:`epsim.circuit.diodes`). Ideal diodes: ``v = clamp(c / a, lo, hi)``. Shockley diodes: all nodes of a layer at
once, to machine precision: a closed-form start (one diode per node makes the equation
solvable with the Lambert W function), Newton steps, and, should any node need it, the
vectorised safeguarded (bracketed) Newton iteration of the numba solver.
A sweep solves the odd layers, then the even layers; before each sweep after the first,
the odd layers' KCL residual (the whole state's, as the even layers were just solved) is
checked and converged samples leave the working batch, exactly as in the numba solver.

:class:`TorchCircuit` holds a network's parameters as tensors and the differentiable maps
(``input_voltages``, ``sweep``, ``relax``...) that :mod:`epsim.robustness.input_gradients`
builds its BPTT and implicit gradients on. :class:`TorchCircuitSolver` is the ``torch``
backend (``prepare`` / ``solve``, numpy in and out, like :class:`NumbaSolver`).
The certificate is always computed in float64 on the returned state, with the numba
solver's definition of the KCL residual, per sample, in amperes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..circuit.diodes import TorchRails, clamp_current_torch, ideal_violation_torch
from ..errors import EpsimError
from .base import Certificate, Equilibrium, check_no_floating_nodes, check_nudge
from .stop_rule import rule_step

NEWTON_MAX_ITER = 200
BRACKET_MAX_DOUBLINGS = 200
LAMBERT_MAX_ITER = 12
FAST_NEWTON_STEPS = 3

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(device="auto") -> torch.device:
    """``'auto'`` -> CUDA when available else CPU; ``'cpu'``; ``'cuda'`` (error if absent)."""
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise EpsimError("device 'cuda' asked for but torch sees no CUDA GPU; use --device cpu or auto")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise EpsimError(f"unknown device {device!r}; choose auto, cpu or cuda")


def resolve_dtype(dtype="float64") -> torch.dtype:
    """``'float64'`` / ``'float32'`` (or the torch dtypes themselves)."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise EpsimError(f"unsupported dtype {dtype}; choose float64 or float32")
    if dtype not in DTYPES:
        raise EpsimError(f"unknown dtype {dtype!r}; choose float64 or float32")
    return DTYPES[dtype]


# ---- node roots with Shockley clamps ------------------------------------------------------
def single_diode_root(a, c, rails: TorchRails, is_n, nvt):
    """Closed-form root (Lambert W) for nodes with at most one clamp diode, (B, n) in V.

    With one diode, ``a v - c + i_diode(v) = 0`` becomes (in the diode's orientation
    ``s = +1`` for a hi-rail diode, ``-1`` for a lo-rail one, ``u = s v - s r``)
    ``a u + Is (exp(u / nVt) - 1) = K``, ``K = s c - a s r``, solved by
    ``u = (K + Is)/a - nVt W(z)``, ``ln z = ln(Is / (a nVt)) + (K + Is)/(a nVt)``. ``W`` is
    computed in log form, ``w = e^q`` with ``e^q + q = ln z``, by Newton steps from the right
    of the (convex) root, which converge monotonically for any ``ln z`` with no overflow.
    Diode-free nodes get ``c / a``; nodes with two diodes ``clamp(c / a, lo, hi)`` (a start
    only). Accurate to a few ulps times the cancellation in ``u``; polished by
    :func:`shockley_root`.
    """
    one = rails.sign != 0
    s = torch.where(one, rails.sign, torch.ones_like(rails.sign))
    k = (s * c - a * s * rails.rail) + is_n  # K + Is
    log_z = np.log(is_n / nvt) - torch.log(a) + k / (a * nvt)
    q = torch.where(log_z < 1.0, log_z, torch.log(torch.clamp(log_z, min=1.0)))
    tol = 4.0 * torch.finfo(c.dtype).eps
    for it in range(LAMBERT_MAX_ITER):
        eq = torch.exp(q)
        dq = (eq + q - log_z) / (eq + 1.0)
        q = q - dq
        if it % 2 == 1 and bool((dq.abs() <= tol * (1.0 + q.abs())).all()):
            break
    u = k / a - nvt * torch.exp(q)
    v_one = s * u + rails.rail
    plain = torch.minimum(torch.maximum(c / a, rails.lo_c), rails.hi_c)
    return torch.where(one, v_one, plain)


def shockley_root(a, c, rails: TorchRails, is_n, nvt, v0=None):
    """Root of the strictly increasing ``f(v) = a v - c + i_diode(v)`` for every node.

    a: (n,) self-conductance; c: (B, n) driving current (normalised); rails: the layer's
    :class:`~epsim.circuit.diodes.TorchRails`; v0: optional (B, n) start for nodes with two
    diodes (V), e.g. the previous sweep's voltages. Returns v (B, n) in V.
    Start: the closed form of :func:`single_diode_root` (a node's KCL with one diode is
    solvable by the Lambert W function). Then the bracket search (step ``nVt`` doubled
    until ``f`` changes sign) and Newton steps with bisection fallback of numba's
    ``_shockley_node``, vectorised with masks, to a relative change of ``8 eps`` for every
    node: the same root as numba's, in a couple of steps from this start. Not
    differentiable itself (see :class:`_ShockleyRoot`).
    """
    eps = 8.0 * torch.finfo(c.dtype).eps
    v = single_diode_root(a, c, rails, is_n, nvt)
    if v0 is not None and not rails.single:
        v = torch.where((rails.has_hi * rails.has_lo) > 0, v0.detach(), v)

    def fun(x):
        i, di = clamp_current_torch(x, rails, is_n, nvt)
        return a * x - c + i, a + di

    # Fast path: from the closed-form start, plain Newton steps until every node's step is
    # below the tolerance (numba's stopping rule). A node that is not there after a few
    # steps sends the whole layer to the safeguarded iteration below, from the start.
    if rails.single:
        x = v
        for _ in range(FAST_NEWTON_STEPS):
            f, df = fun(x)
            step = f / df
            x = x - step
            if bool((step.abs() <= eps * (1.0 + x.abs())).all()):
                return x

    f, _ = fun(v)
    step = torch.full_like(v, nvt)
    pos = f > 0
    left = torch.where(pos, v - step, v)
    right = torch.where(pos, v, v + step)
    for _ in range(BRACKET_MAX_DOUBLINGS):
        f_end, _ = fun(torch.where(pos, left, right))
        bad = torch.where(pos, f_end > 0, f_end < 0)
        if not bool(bad.any()):
            break
        step = torch.where(bad, 2.0 * step, step)
        left = torch.where(bad & pos, v - step, left)
        right = torch.where(bad & ~pos, v + step, right)
    done = f == 0
    for k in range(NEWTON_MAX_ITER):
        f, df = fun(v)
        right = torch.where(f > 0, v, right)
        left = torch.where(f < 0, v, left)
        step = f / df
        v_new = v - step
        scale = eps * (1.0 + v.abs())
        small = step.abs() <= scale  # converged: a step below the tolerance (may round to v)
        v_new = torch.where((v_new > left) & (v_new < right) | small, v_new, 0.5 * (left + right))
        finished = (f == 0) | small | (right - left <= scale)
        v_new = torch.where(f == 0, v, v_new)
        v = torch.where(done, v, v_new)
        done = done | finished
        if k % 3 == 2 and bool(done.all()):
            break
    return v


class _ShockleyRoot(torch.autograd.Function):
    """``v = shockley_root(a, c)`` with implicit derivatives ``dv/dc = 1/f'``, ``dv/da = -v/f'``."""

    @staticmethod
    def forward(ctx, a, c, rails, is_n, nvt, v0):
        with torch.no_grad():
            v = shockley_root(a, c, rails, is_n, nvt, v0)
        ctx.save_for_backward(a, v)
        ctx.rails, ctx.is_n, ctx.nvt = rails, is_n, nvt
        return v

    @staticmethod
    def backward(ctx, grad_v):
        a, v = ctx.saved_tensors
        _, di = clamp_current_torch(v, ctx.rails, ctx.is_n, ctx.nvt)
        g = grad_v / (a + di)
        grad_a = (-(g * v)).sum(dim=0) if ctx.needs_input_grad[0] else None
        grad_c = g if ctx.needs_input_grad[1] else None
        return grad_a, grad_c, None, None, None, None


# ---- the circuit as tensors --------------------------------------------------------------
class TorchCircuit:
    """A :class:`ResistiveNetwork`'s parameters as torch tensors, and its equations.

    Layers are numbered as in the model: 0 = input sources, 1..L = free layers; node
    arrays are flat ``(B, n_l)`` tensors. All currents are normalised (amperes /
    ``g_unit_S``). The tensors are a snapshot: rebuild after the parameters of ``net``
    change.

    States are the *normalised* voltages ``u_l = v_l / P_l`` (``P_l``: ``layer_p``, the
    product of the amplifier gains below layer l; ``u = v`` in volts without amplifiers),
    in which an amplified circuit is a passive one (see :mod:`epsim.models.resistive`):
    ``bias``, rails and diode constants below are those of the normalised circuit.
    Inputs, targets and residuals are physical; :meth:`to_physical`,
    :meth:`to_normalised` and :meth:`output_voltages` convert states.

    Attributes:
        conns: L connection objects over the layers' own nodes; w: L tensors, their
            normalised drive weights (the conductances, or ``g+ - g-`` of a differentially
            presented layer: :mod:`epsim.models.presentation`).
        bias: L tensors (n_l,), normalised bias current (V) per node of layer l+1, / P_l.
        lo, hi: L tensors (n_l,), clamp rails (V) / P_l, ``-inf``/``+inf`` = no diode.
        is_n, nvt: L floats, ``Is / (g_unit P_l)`` and ``n Vt / P_l`` (V).
        degree: L tensors (n_l,), total normalised conductance of each free node
            (both adjacent crossbars and the leak to 0 V, nudging excluded).
    """

    def __init__(self, net, device="auto", dtype="float64"):
        self.net = net
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        t = self.tensor
        self.L = net.num_layers
        views = net.crossbar_views()
        self.conns = [view.conn for view in views]  # over the layers' own nodes
        self.w = [t(view.w_drive) for view in views]  # signed where a layer is differential
        self.layer_p = [float(p) for p in net.layer_scale]
        self.amplified = net.has_amplifiers
        p = self.layer_p
        self.bias = [t(net.bias_per_node(l) / p[l - 1]) for l in range(1, self.L + 1)]
        self.lo = [t(x / pl) for x, pl in zip(net.rail_lo_V, p)]
        self.hi = [t(x / pl) for x, pl in zip(net.rail_hi_V, p)]
        self.rails = [TorchRails(lo, hi) for lo, hi in zip(self.lo, self.hi)]
        self.g_unit_S = float(net.ranges.g_unit_S)
        self.input_gain_V = float(net.input_gain_V)
        self.input_center = float(net.input_center)
        self.shockley = net.diode.kind == "shockley"
        self.is_n = [float(net.diode.is_A / net.ranges.g_unit_S) / pl for pl in p]
        self.nvt = [float(net.diode.n_vt_V) / pl for pl in p]
        self.degree = [t(d) for d in net.self_conductances(views)]
        check_no_floating_nodes(self.degree)
        # the cross-entropy nudge's current is a function of the physical outputs P_L u
        self.ce_p = self.layer_p[-1] if net.cost == "cross-entropy" else 0.0

    def tensor(self, x):
        """``x`` (array or tensor) as a tensor of this circuit's dtype and device."""
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x,
                               dtype=self.dtype, device=self.device)

    def to_normalised(self, v_free) -> list:
        """Node voltages (list of (B, n_l) arrays or tensors, V) -> states (tensors)."""
        return [self.tensor(x) / pl if self.amplified else self.tensor(x)
                for x, pl in zip(v_free, self.layer_p)]

    def to_physical(self, u_free) -> list:
        """States -> node voltages (V), list of (B, n_l) tensors (differentiable)."""
        if not self.amplified:
            return list(u_free)
        return [u * pl for u, pl in zip(u_free, self.layer_p)]

    def output_voltages(self, u_free):
        """(B, K) output node voltages (V) of a state (differentiable)."""
        return u_free[-1] * self.layer_p[-1] if self.amplified else u_free[-1]

    def with_dtype(self, dtype) -> "TorchCircuit":
        """The same circuit in another dtype (itself when unchanged)."""
        dtype = resolve_dtype(dtype)
        return self if dtype == self.dtype else TorchCircuit(self.net, self.device, dtype)

    # ---- crossbar maps (connection index k joins layer k to layer k+1) -----------------
    def drive_out(self, k, v_in):
        """(B, n_{k+1}) current ``sum_i w_ij v_in_i`` into layer k+1 from layer k (B, n_k)."""
        conn, w = self.conns[k], self.w[k]
        if conn.kind == "dense":
            return v_in @ w
        x = v_in.reshape((v_in.shape[0],) + conn.in_shape)
        if conn.padding:
            return F.conv2d(x, w, stride=conn.stride, padding=conn.padding).reshape(v_in.shape[0], -1)
        return F.conv2d(x, w, stride=conn.stride).reshape(v_in.shape[0], -1)

    def drive_in(self, k, v_out):
        """(B, n_k) current ``sum_j w_ij v_out_j`` into layer k from layer k+1 (B, n_{k+1})."""
        conn, w = self.conns[k], self.w[k]
        if conn.kind == "dense":
            return v_out @ w.T
        _, h, wd = conn.in_shape
        _, ho, wo = conn.out_shape
        s, kk, p = conn.stride, conn.kernel, conn.padding
        extra = (h - ((ho - 1) * s - 2 * p + kk), wd - ((wo - 1) * s - 2 * p + kk))
        y = v_out.reshape((v_out.shape[0],) + conn.out_shape)
        if p:
            return F.conv_transpose2d(y, w, stride=s, padding=p, output_padding=extra).reshape(v_out.shape[0], -1)
        return F.conv_transpose2d(y, w, stride=s, output_padding=extra).reshape(v_out.shape[0], -1)

    # ---- inputs and node equations ------------------------------------------------------
    def input_voltages(self, x):
        """(B, n_0) input source voltages ``gain * (x - c, c - x)`` (V; ``c`` the network's
        ``input_center``) from images (B, C, H, W) in [0, 1].

        Differentiable: keeps ``x``'s autograd graph (``x`` is cast to this circuit's dtype).
        """
        if not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if x.dim() == 3:
            x = x[None]
        if tuple(x.shape[1:]) != self.net.image_shape:
            raise EpsimError(f"input images have shape {tuple(x.shape[1:])}, model expects {self.net.image_shape}")
        x = x.to(device=self.device, dtype=self.dtype)
        x = x - self.input_center
        return (self.input_gain_V * torch.cat([x, -x], dim=1)).reshape(x.shape[0], -1)

    def self_conductance(self, l, beta=0.0):
        """(n_l,) total normalised conductance of layer l's nodes, the squared-error nudge's
        conductance included (the cross-entropy nudge is a current source)."""
        a = self.degree[l - 1]
        if l == self.L and beta != 0.0:
            check_nudge(a, beta)
            if not self.ce_p:
                a = a + beta
        return a

    def drive(self, l, input_drive, v_free, beta=0.0, target_V=None):
        """(B, n_l) normalised current driven into layer l by its neighbours and sources.

        input_drive: (B, n_1) ``drive_out(0, v_input)`` (constant across sweeps and phases);
        v_free: list of the L free layers' (B, n_l) states; target_V: (B, K) target output
        voltages (V) when nudged (the cross-entropy nudge: target probabilities, and its
        current is not part of the drive: :meth:`solve_layer`, :meth:`nudged_drive`).
        """
        c = input_drive if l == 1 else self.drive_out(l - 1, v_free[l - 2])
        c = c + self.bias[l - 1]
        if l < self.L:
            c = c + self.drive_in(l, v_free[l])
        if l == self.L and beta != 0.0 and not self.ce_p:
            c = c + beta * (target_V / self.layer_p[-1] if self.amplified else target_V)
        return c

    def delta_drive(self, l, d, u_free, beta=0.0, target_V=None):
        """(B, n_l) change of the normalised current into layer l when the free layers move by
        ``d`` from the free state ``u_free`` (lists of (B, n_l)): the neighbours' changes
        through the crossbars (sources and biases do not move) and, on the output layer of a
        squared-error-nudged phase, the nudge's source ``beta (target - u_free)``."""
        c = None
        if l > 1:
            c = self.drive_out(l - 1, d[l - 2])
        if l < self.L:
            up = self.drive_in(l, d[l])
            c = up if c is None else c + up
        if l == self.L and beta != 0.0 and not self.ce_p:
            t = target_V / self.layer_p[-1] if self.amplified else target_V
            nudge = beta * (t - u_free[l - 1])
            c = nudge if c is None else c + nudge
        return c if c is not None else torch.zeros_like(d[l - 1])

    def clamp_currents(self, l, input_drive, u_free):
        """(B, n_l) current ``c - a u`` each ideal clamp diode of layer l carries in the free
        state ``u_free``, with the sign it can carry, 0 off the rails (numba's ``_clamp_currents``)."""
        u = u_free[l - 1]
        r = self.drive(l, input_drive, u_free) - self.self_conductance(l) * u
        zero = torch.zeros_like(r)
        return torch.where(u <= self.lo[l - 1], torch.minimum(r, zero),
                           torch.where(u >= self.hi[l - 1], torch.maximum(r, zero), zero))

    def solve_layer_delta(self, l, a, c, d_prev, u0, s, beta=0.0, target=None):
        """Layer l's change from the free state ``u0`` given the change ``c`` of its drive and
        its free clamp currents ``s`` (ideal diodes): ``clip((s + c) / a, lo - u0, hi - u0)``,
        or the cross-entropy outputs' change (:meth:`_ce_outputs` about ``u0``)."""
        if l == self.L and beta != 0.0 and self.ce_p:
            return self._ce_outputs(a, c, beta, target, d_prev, base=u0)
        return torch.minimum(torch.maximum((s + c) / a, self.lo[l - 1] - u0), self.hi[l - 1] - u0)

    def nudged_drive(self, l, c, v, beta=0.0, target=None):
        """``c`` (B, n_l) plus, on the output layer of a cross-entropy-nudged phase, the nudge
        current ``(beta / P_L)(y - softmax(P_L v))`` at the state ``v`` (B, K): the whole
        current into the nodes, for residuals."""
        if l != self.L or beta == 0.0 or not self.ce_p:
            return c
        return c + beta / self.ce_p * (target - torch.softmax(self.ce_p * v, dim=1))

    def solve_layer(self, l, a, c, v_prev, beta=0.0, target=None):
        """Layer l's nodes given their drive ``c``: :meth:`relax`, or on the output layer of a
        cross-entropy-nudged phase the root of ``a u - c - (beta/P)(y - softmax(P u))``
        (:meth:`_ce_outputs`)."""
        if l == self.L and beta != 0.0 and self.ce_p:
            return self._ce_outputs(a, c, beta, target, v_prev)
        return self.relax(l, a, c, v_prev)

    def _ce_outputs(self, a, c, beta, y, u, base=None):
        """Newton's method on the output block's strictly convex potential
        ``1/2 sum a u^2 - c.u + beta/P^2 (lse(P (base + u)) - y.(P u))`` (B samples at once),
        from ``u`` (B, K); the Jacobian ``diag(a + beta p) - beta p p^T`` by Sherman-Morrison, a
        step halved until it lowers the potential or the largest residual (as numba's).
        ``base``: the free outputs when ``u`` is a change from them (steps then judged
        relative to ``|u|``), else None."""
        p_l = self.ce_p
        unit = 1.0 if base is None else 0.0
        base = torch.zeros_like(u) if base is None else base

        def potential(x):
            return (0.5 * a * x * x - c * x).sum(1) + beta / p_l ** 2 * (
                torch.logsumexp(p_l * (base + x), dim=1) - (y * p_l * x).sum(1))

        def residual(x):
            return a * x - c - beta / p_l * (y - torch.softmax(p_l * (base + x), dim=1))

        f = potential(u)
        eps = float(torch.finfo(self.dtype).eps)
        for _ in range(100):
            p = torch.softmax(p_l * (base + u), dim=1)
            g = residual(u)
            g_max = g.abs().amax(1)
            d = a + beta * p
            dg, dp = (p * g / d).sum(1, keepdim=True), (p * p / d).sum(1, keepdim=True)
            step = (g + beta * dg / (1.0 - beta * dp) * p) / d
            if bool((step.abs().amax(1) <= eps * (unit + u.abs().amax(1))).all()):
                break
            t = torch.ones_like(f)
            for _ls in range(60):
                trial = u - t[:, None] * step
                f_new = potential(trial)
                accepted = (f_new < f) | (residual(trial).abs().amax(1) < g_max)
                if bool(accepted.all()):
                    break
                t = torch.where(accepted, t, 0.5 * t)
            if not bool(accepted.any()):
                break
            u = torch.where(accepted[:, None], trial, u)
            f = torch.where(accepted, f_new, f)
        return u

    def diode_current(self, l, v):
        """Layer l's clamp-diode currents (B, n_l) leaving the nodes at ``v``, and d/dv."""
        return clamp_current_torch(v, self.rails[l - 1], self.is_n[l - 1], self.nvt[l - 1])

    def relax(self, l, a, c, v_prev=None):
        """(B, n_l) exact solution of layer l's node equations given the drive ``c`` (B, n_l).

        Differentiable in ``c`` (and ``a``): a clamp for ideal diodes (zero derivative at
        clamped nodes), the implicit derivative of the root for Shockley diodes (``v_prev``,
        the layer's current voltages, only warm-starts the Newton iteration).
        """
        if self.shockley:
            if torch.is_grad_enabled() and (c.requires_grad or a.requires_grad):
                return _ShockleyRoot.apply(a, c, self.rails[l - 1], self.is_n[l - 1], self.nvt[l - 1], v_prev)
            return shockley_root(a, c, self.rails[l - 1], self.is_n[l - 1], self.nvt[l - 1], v_prev)
        return torch.clamp(c / a, min=self.lo[l - 1], max=self.hi[l - 1])

    def layer_residual(self, l, a, c, v):
        """(B,) max KCL violation (normalised current, physical: the normalised circuit's
        times ``P_l``) over layer l's nodes, numba's definition."""
        r = a * v - c
        lo, hi = self.lo[l - 1], self.hi[l - 1]
        if self.shockley:
            i, _ = self.diode_current(l, v)
            node = (r + i).abs()
        else:
            node = ideal_violation_torch(r, v, lo, hi, a)
        if node.shape[1] == 0:
            return torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        worst = node.amax(dim=1)
        return worst * self.layer_p[l - 1] if self.amplified else worst

    def sweep(self, v_free, input_drive, a, beta=0.0, target_V=None):
        """One odd-then-even block sweep; returns the new list of (B, n_l) states (functional).

        a: list of the L self-conductances (:meth:`self_conductance`).
        """
        v = list(v_free)
        for l in list(range(1, self.L + 1, 2)) + list(range(2, self.L + 1, 2)):
            v[l - 1] = self.solve_layer(l, a[l - 1], self.drive(l, input_drive, v, beta, target_V), v[l - 1],
                                        beta, target_V)
        return v

    def residual(self, v_free, input_drive, beta=0.0, target_V=None):
        """(B,) max KCL residual of a state over all free layers (normalised current)."""
        res = None
        for l in range(1, self.L + 1):
            c = self.nudged_drive(l, self.drive(l, input_drive, v_free, beta, target_V), v_free[l - 1], beta,
                                  target_V)
            r = self.layer_residual(l, self.self_conductance(l, beta), c, v_free[l - 1])
            res = r if res is None else torch.maximum(res, r)
        return res

    def zeros_state(self, batch):
        """All free nodes at 0 V (inside every clamp): list of (batch, n_l) state tensors."""
        return [torch.zeros(batch, n, dtype=self.dtype, device=self.device)
                for n in self.net.layer_sizes[1:]]

    def input_source_currents(self, v_input, v_1):
        """(B, n_0) normalised current delivered by each input source into the network.

        ``I_i = sum_j w_ij (v_i - v_j)`` over the first crossbar: the current leaving the
        source's terminal into node i (multiply by ``g_unit_S`` for amperes).
        """
        deg_in = self.drive_in(0, torch.ones(1, v_1.shape[1], dtype=self.dtype, device=self.device))[0]
        return v_input * deg_in - self.drive_in(0, v_1)


# ---- the solver backend ------------------------------------------------------------------
class TorchProblem:
    """A network and an input batch prepared on a device: shared by the three EP phases.

    circuit: :class:`TorchCircuit` (working dtype); v_input: (B, n_0) numpy float64 (V);
    v_input_t: the same as a tensor; input_drive: (B, n_1) tensor, first crossbar's drive.
    """

    def __init__(self, net, v_input, device="auto", dtype="float64"):
        self.net = net
        self.v_input = np.ascontiguousarray(v_input, dtype=np.float64)
        if self.v_input.ndim != 2 or self.v_input.shape[1] != net.layer_sizes[0]:
            raise EpsimError(f"input voltages have shape {self.v_input.shape}, "
                             f"model expects (batch, {net.layer_sizes[0]})")
        self.circuit = TorchCircuit(net, device, dtype)
        self.v_input_t = self.circuit.tensor(self.v_input)
        self.input_drive = self.circuit.drive_out(0, self.v_input_t)
        self._c64 = None

    @property
    def batch(self) -> int:
        return self.v_input.shape[0]

    @property
    def circuit64(self) -> TorchCircuit:
        """The float64 circuit used for certificates (the working one when it is float64)."""
        if self._c64 is None:
            self._c64 = self.circuit.with_dtype(torch.float64)
        return self._c64

    def residual_A(self, v_free, beta=0.0, target_V=None) -> np.ndarray:
        """(B,) exact max KCL residual in amperes of node voltages (V, numpy), in float64."""
        c = self.circuit64
        v = c.to_normalised(v_free)
        vin = c.tensor(self.v_input)
        tgt = c.tensor(target_V) if beta != 0.0 else None
        with torch.no_grad():
            res = c.residual(v, c.drive_out(0, vin), beta, tgt)
        return res.cpu().numpy() * self.net.ranges.g_unit_S


class TorchCircuitSolver:
    """The ``torch`` backend: the circuit's exact block coordinate descent on CPU or CUDA.

    Options: ``tol_A`` (KCL tolerance, A), ``max_iter`` (sweeps), ``device``
    (``'auto' | 'cpu' | 'cuda'``), ``dtype`` (``'float64'`` default, ``'float32'``).
    ``prepare(net, v_input)`` -> :class:`TorchProblem`; ``solve(prepared, beta, target_V,
    init)`` -> :class:`Equilibrium` with numpy float64 voltages and a float64 certificate.
    """

    name = "torch"

    def __init__(self, tol_A=1e-9, max_iter=1000, device="auto", dtype="float64", nudge_rtol=None):
        self.tol_A = float(tol_A)
        self.max_iter = int(max_iter)
        self.nudge_rtol = None if nudge_rtol is None else float(nudge_rtol)
        if not (self.tol_A > 0 and self.max_iter >= 1):
            raise EpsimError("torch solver needs tol_A > 0 and max_iter >= 1")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)

    def prepare(self, net, v_input) -> TorchProblem:
        return TorchProblem(net, v_input, self.device, self.dtype)

    def solve(self, prepared: TorchProblem, beta=0.0, target_V=None, init=None) -> Equilibrium:
        """Equilibrium of one phase (``beta`` = 0, +beta or -beta), see the numba solver.

        target_V: (B, K) target output voltages (V), needed when ``beta != 0``;
        init: list of (B, n_l) arrays or tensors to start from (copied), default 0 V.
        """
        if beta != 0.0 and target_V is None:
            raise EpsimError("a nudged phase needs target voltages")
        relative = self.nudge_rtol is not None and beta != 0.0 and init is not None
        met = np.zeros(prepared.input_drive.shape[0], dtype=np.bool_) if relative else None
        circuit = prepared.circuit
        target = None if target_V is None else circuit.tensor(target_V)
        start = None if init is None else circuit.to_normalised(init)
        response = None
        if relative and not circuit.shockley:  # solved as the change from the free state
            d, sweeps = solve_change(circuit, prepared.input_drive, beta, target, start, self.max_iter,
                                     self.nudge_rtol, met)
            response = [x.to(torch.float64).cpu().numpy() for x in circuit.to_physical(d)]
            v = [u + x for u, x in zip(start, d)]
        else:
            v, sweeps = solve_tensors(circuit, prepared.input_drive, beta, target, start, self.tol_A,
                                      self.max_iter, nudge_rtol=self.nudge_rtol if relative else None, met=met)
        v_np = [x.to(torch.float64).cpu().numpy() for x in circuit.to_physical(v)]
        cert = Certificate(prepared.residual_A(v_np, beta, target_V), sweeps, self.tol_A, backend="torch",
                           stop_met=met)
        return Equilibrium(prepared.v_input, v_np, beta, cert, response_V=response)


def solve_tensors(circuit: TorchCircuit, input_drive, beta=0.0, target_V=None, init=None,
                  tol_A=1e-9, max_iter=1000, nudge_rtol=None, met=None):
    """Block coordinate descent on tensors, with numba's per-sample stopping rules.

    ``nudge_rtol`` (a nudged phase started from the free state ``init``): stop each sample
    on the relative nudge rule (:mod:`epsim.solvers.stop_rule`), marking it in ``met``
    ((B,) bool numpy array), instead of on ``tol_A``.

    input_drive: (B, n_1); target_V: (B, K) tensor (V) or None; init: list of (B, n_l)
    states (:class:`TorchCircuit`'s normalised voltages) or None.
    Returns ``(v_free, sweeps)``: list of (B, n_l) state tensors (working dtype) and the
    number of sweeps. Converged samples are dropped from the working batch (no further updates).
    Below float64 the stopping rule uses ``tol_A / 2``, a margin for the working precision,
    since certificates are recomputed in float64.
    No autograd (use :meth:`TorchCircuit.sweep` to differentiate through sweeps).
    """
    c = circuit
    L = c.L
    batch = input_drive.shape[0]
    with torch.no_grad():
        if init is not None:
            if len(init) != L:
                raise EpsimError(f"initial state has {len(init)} layers, model has {L}")
            full = [c.tensor(x).clone() for x in init]
        else:
            full = c.zeros_state(batch)
        a = [c.self_conductance(l, beta) for l in range(1, L + 1)]
        tol_n = tol_A / c.g_unit_S
        if c.dtype != torch.float64:
            # the certificate is recomputed in float64 on the returned state: keep a margin
            # for the working precision's rounding of the residual
            tol_n *= 0.5
        if nudge_rtol is not None:
            work = [x.clone() for x in full]
            idx = torch.arange(batch, device=c.device)
            return _relative_sweeps(c, a, full, work, idx, input_drive, target_V, beta, nudge_rtol, max_iter, met)
        return sweep_to_tolerance(c, a, full, input_drive, beta, target_V, tol_n, max_iter)


def sweep_to_tolerance(c: TorchCircuit, a, full, input_drive, beta, target_V, tol_n, max_iter):
    """Odd/even sweeps from the states ``full`` (list of (B, n_l), written in place) until each
    sample's KCL residual is within ``tol_n`` (normalised), at most ``max_iter`` sweeps: the
    per-sample rule of :func:`solve_tensors` and of the numba solver. A sample that meets it
    is dropped from the working batch, so its state stops changing while the others go on.

    a: the L self-conductances (:meth:`TorchCircuit.self_conductance`). Returns ``(full, sweeps)``.
    Autograd records through it when enabled (backprop through the predictor's own sweeps).
    """
    L = c.L
    odd = list(range(1, L + 1, 2))
    even = list(range(2, L + 1, 2))
    idx = torch.arange(input_drive.shape[0], device=c.device)
    work = [x.clone() for x in full]
    drive0, tgt = input_drive, target_V
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        drives = {l: c.drive(l, drive0, work, beta, tgt) for l in odd}
        if sweeps > 1:
            res = None
            with torch.no_grad():  # the stopping test: no part of what autograd differentiates
                for l in odd:
                    r = c.layer_residual(l, a[l - 1], c.nudged_drive(l, drives[l], work[l - 1], beta, tgt),
                                         work[l - 1])
                    res = r if res is None else torch.maximum(res, r)
            keep = res > tol_n
            n_keep = int(keep.sum())
            if n_keep < idx.shape[0]:
                for l in range(L):
                    full[l][idx] = work[l]
                if n_keep == 0:
                    idx = idx[:0]
                    break
                idx = idx[keep]
                work = [x[keep] for x in work]
                drives = {l: d[keep] for l, d in drives.items()}
                drive0 = drive0[keep]
                tgt = tgt[keep] if tgt is not None else None
        for l in odd:
            work[l - 1] = c.solve_layer(l, a[l - 1], drives[l], work[l - 1], beta, tgt)
        for l in even:
            work[l - 1] = c.solve_layer(l, a[l - 1], c.drive(l, drive0, work, beta, tgt), work[l - 1], beta, tgt)
    if idx.shape[0]:
        for l in range(L):
            full[l][idx] = work[l]
    return full, sweeps


def solve_change(circuit: TorchCircuit, input_drive, beta, target_V, u_free, max_iter, rtol, met):
    """A nudged phase of an ideal-diode circuit solved as its change from the free state
    ``u_free`` (list of (B, n_l), normalised), under the relative nudge rule: numba's change
    form, which keeps a response many orders below the voltages to its own precision.
    Returns ``(d, sweeps)``, the changes (list of (B, n_l) tensors) and the sweep count."""
    c = circuit
    with torch.no_grad():
        u_free = [c.tensor(x) for x in u_free]
        a = [c.self_conductance(l, beta) for l in range(1, c.L + 1)]
        clamp = [c.clamp_currents(l, input_drive, u_free) for l in range(1, c.L + 1)]
        full = [torch.zeros_like(x) for x in u_free]
        idx = torch.arange(input_drive.shape[0], device=c.device)
        return _relative_sweeps(c, a, full, [x.clone() for x in full], idx, input_drive, target_V, beta, rtol,
                                max_iter, met, change_form=(u_free, clamp))


def _relative_sweeps(c, a, full, work, idx, drive0, tgt, beta, rtol, max_iter, met, change_form=None):
    """The odd/even sweeps of :func:`solve_tensors` under the relative nudge rule; the
    per-layer changes and responses go through :func:`~epsim.solvers.stop_rule.rule_step`.
    ``change_form``: ``(u_free, clamp)``, the states are changes from the free state
    (:func:`solve_change`)."""
    L = c.L
    order = list(range(1, L + 1, 2)) + list(range(2, L + 1, 2))
    ref = [x.clone() for x in work]
    base, clamp = change_form if change_form is not None else (None, None)
    n = idx.shape[0]
    # the rule's rounding floor is float64's: scale it to the working precision
    precision = float(torch.finfo(c.dtype).eps / np.finfo(np.float64).eps)
    change_prev = np.full((L, n), np.inf)
    error = np.zeros((L, n))
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        change, response, scale = (np.zeros((L, idx.shape[0])) for _ in range(3))
        for l in order:
            if base is not None:
                new = c.solve_layer_delta(l, a[l - 1], c.delta_drive(l, work, base, beta, tgt), work[l - 1],
                                          base[l - 1], clamp[l - 1], beta, tgt)
            else:
                new = c.solve_layer(l, a[l - 1], c.drive(l, drive0, work, beta, tgt), work[l - 1], beta, tgt)
            stats = torch.stack([(new - work[l - 1]).abs().amax(1), (new - ref[l - 1]).abs().amax(1),
                                 new.abs().amax(1)]).to(torch.float64).cpu().numpy()
            change[l - 1], response[l - 1], scale[l - 1] = stats[0], stats[1], precision * stats[2]
            work[l - 1] = new
        met_work = np.zeros(idx.shape[0], dtype=np.bool_)
        rule_step(change, response, scale, change_prev, error, float(rtol),
                  np.ones(idx.shape[0], dtype=np.bool_), met_work)
        if met_work.any():
            for l in range(L):
                full[l][idx] = work[l]
            met[idx[torch.from_numpy(met_work).to(idx.device)].cpu().numpy()] = True
            keep_np = ~met_work
            if not keep_np.any():
                return full, sweeps
            keep = torch.from_numpy(keep_np).to(idx.device)
            idx, drive0 = idx[keep], drive0[keep]
            work, ref = [x[keep] for x in work], [x[keep] for x in ref]
            if base is not None:
                base, clamp = [x[keep] for x in base], [x[keep] for x in clamp]
            tgt = tgt[keep] if tgt is not None else None
            change_prev, error = change_prev[:, keep_np], error[:, keep_np]
    for l in range(L):
        full[l][idx] = work[l]
    return full, sweeps
