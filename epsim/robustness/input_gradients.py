"""Gradients of a loss with respect to the input images of a resistive circuit.

Three routes to ``dL/dx`` for images ``x`` (B, C, H, W) in [0, 1], where the circuit's input
sources sit at ``v_in = gain * (x, -x)`` (V) and ``L`` is a function of the output node
voltages ``v_out`` (B, K) at equilibrium:

1. **BPTT** (:func:`circuit_forward`, :func:`bptt_input_gradient`): unroll ``n_iter`` exact
   block sweeps from 0 V with torch autograd. Each sweep is differentiable (a clamp for
   ideal diodes, the implicit derivative of each node's 1-D root for Shockley diodes), so
   with enough sweeps this tends to the gradient at the fixed point.
2. **Implicit differentiation** (:func:`implicit_input_gradient`) at the equilibrium
   ``v*``. KCL reads ``H v* = B v_in + b`` on the free nodes, where ``H`` is the Hessian of
   the co-content (self-conductances on the diagonal, minus the crossbar conductances off
   it; plus the diode small-signal conductances ``di/dv`` for Shockley diodes; plus
   ``beta`` at the outputs when nudged). Ideal-diode nodes clamped at a rail do not move
   with the input (fixed active set), so the system is restricted to the unclamped nodes.
   With the adjoint ``lambda`` solving ``H_FF lambda = dL/dv_F`` (batched conjugate
   gradients, ``H`` applied with the same crossbar maps as the solver),
   ``dL/dv_in = W_01 lambda_1`` (the first crossbar's ``drive_in``).
3. **EP estimate** (:func:`ep_input_gradient`) from quantities the circuit itself can
   measure: the currents of the input voltage sources in the ``+beta`` and ``-beta`` nudged
   phases. Derivation: the total energy ``F(v, v_in, beta) = E(v, v_in) + beta C(v_out)``
   with ``C = 1/2 ||v_out - y||^2`` (the nudging cost, V^2) has, at its minimiser
   ``v*(v_in, beta)``, ``dF*/dv_in = dE/dv_in = I / g_unit`` (envelope theorem), where
   ``I_i = sum_j G_ij (v_in_i - v_j)`` is the current (A) that source i delivers into the
   network. Swapping the derivatives in ``d^2 F*/(dv_in dbeta)`` and using ``dF*/dbeta =
   C(v*)`` gives ``dC/dv_in_i = d I_i / dbeta / g_unit``, estimated symmetrically::

       dL/dv_in_i  ~=  (I_i^{+beta} - I_i^{-beta}) / (2 beta g_unit)      (V, with L in V^2)

   with a **plus** sign for this current convention (verified against the implicit
   gradient in ``tests/test_input_gradients.py``). The EP route estimates the gradient of
   the nudging cost only (squared error to targets ``y``).

With amplifiers (gains ``A_l``, ``P_l = A_1 ... A_{l-1}``) the routes work on the normalised
voltages ``v_l / P_l``, in which the circuit is passive (:mod:`epsim.models.resistive`):
the Hessian stays symmetric, and the EP estimate gains the factor ``P_L^2`` (the output
cost enters the co-content as ``C / P_L^2``).

All routes end with the chain rule through the two polarities:
``dL/dx[c] = gain * (dL/dv_in[c] - dL/dv_in[C + c])``.

Units: voltages V, conductances and currents normalised by ``g_unit_S`` unless a name ends
in ``_A``/``_S``; ``dL/dx`` has the units of ``L`` (V^2 for the squared error) per pixel
unit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConvergenceError, EpsimError
from ..models.resistive import one_hot_targets
from ..solvers.torch_solver import TorchCircuit, resolve_dtype, solve_tensors


@dataclass
class InputGradient:
    """An input gradient and the equilibrium it was taken at.

    grad_x:     (B, C, H, W) ``dL/dx`` (a tensor on ``x``'s device when ``x`` was a tensor,
                else a numpy array).
    loss:       (B,) per-sample loss at the free equilibrium (numpy).
    v_output:   (B, K) free-phase output voltages (V, numpy).
    converged:  (B,) bool: every solve behind this sample's gradient met its tolerance.
    residual_A: (B,) worst KCL residual (A) of the equilibria used.
    method:     ``"bptt"``, ``"implicit"`` or ``"ep"``.
    extras:     method-specific diagnostics (e.g. source currents, linear-solve residual).
    """

    grad_x: object
    loss: np.ndarray
    v_output: np.ndarray
    converged: np.ndarray
    residual_A: np.ndarray
    method: str
    extras: dict = field(default_factory=dict)


def squared_error_loss(target_V):
    """Loss function ``v_out (B, K) -> (B,)``: ``1/2 sum_o (v_o - y_o)^2`` (V^2), the nudging cost.

    target_V: (B, K) target voltages (array or tensor).
    """
    def loss_fn(v_out):
        t = torch.as_tensor(np.asarray(target_V) if not torch.is_tensor(target_V) else target_V,
                            dtype=v_out.dtype, device=v_out.device)
        return 0.5 * ((v_out - t) ** 2).sum(dim=1)

    return loss_fn


def _as_circuit(net, x, device=None, dtype=None) -> TorchCircuit:
    """``net`` as a :class:`TorchCircuit` (reused when it already is one)."""
    if isinstance(net, TorchCircuit):
        return net if dtype is None else net.with_dtype(resolve_dtype(dtype))
    if device is None:
        device = x.device if torch.is_tensor(x) else "auto"
    return TorchCircuit(net, device, dtype or "float64")


def _per_sample(loss, batch):
    """Validate a loss_fn output: (B,) per-sample losses or a scalar; returns (tensor, (B,) or None)."""
    if loss.dim() == 0:
        return loss, None
    if loss.shape != (batch,):
        raise EpsimError(f"loss_fn must return a scalar or shape ({batch},), got {tuple(loss.shape)}")
    return loss.sum(), loss


def _grad_x_from_v_in(circuit, g_vin, x):
    """Chain rule through ``v_in = gain * (x, -x)``: (B, n_0) -> (B, C, H, W), same kind as ``x``."""
    c, h, w = circuit.net.image_shape
    g = g_vin.reshape(g_vin.shape[0], 2 * c, h, w)
    gx = circuit.input_gain_V * (g[:, :c] - g[:, c:])
    if torch.is_tensor(x):
        return gx.to(device=x.device, dtype=x.dtype if x.dtype.is_floating_point else gx.dtype)
    return gx.detach().to(torch.float64).cpu().numpy()


# ---- 1. BPTT ---------------------------------------------------------------------------
def circuit_forward(net, x, n_iter, beta=0.0, target_V=None, *, init=None, device=None,
                    dtype=None, return_state=False):
    """Output voltages (B, K) after ``n_iter`` block sweeps from 0 V, differentiable in ``x``.

    Args:
        net: a :class:`ResistiveNetwork` or a prepared :class:`TorchCircuit` (reuse one across
            attack steps; its tensors are a snapshot of the parameters).
        x: (B, C, H, W) image tensor in [0, 1] (may require grad), or an array.
        n_iter: number of odd/even sweeps unrolled (the BPTT horizon, like T of the GPU model).
        beta, target_V: nudging (``target_V`` (B, K) in V, needed when ``beta != 0``).
        init: optional list of (B, n_l) starting voltages (V); default all 0 V.
        device / dtype: for a fresh circuit: default ``x``'s device (else auto), float64.
        return_state: also return the list of all free layers' (B, n_l) voltages.

    Returns:
        ``v_out`` (B, K) tensor in V (circuit dtype and device), with autograd history back to
        ``x``; or ``(v_out, v_free)`` when ``return_state``. Not a convergence-checked
        equilibrium: pass enough sweeps (compare with :class:`TorchCircuitSolver`).
    """
    if int(n_iter) < 1:
        raise EpsimError("n_iter must be at least 1 sweep")
    if beta != 0.0 and target_V is None:
        raise EpsimError("a nudged phase needs target voltages")
    circuit = _as_circuit(net, x, device, dtype)
    v_in = circuit.input_voltages(x)
    input_drive = circuit.drive_out(0, v_in)
    tgt = circuit.tensor(target_V) if beta != 0.0 else None
    a = [circuit.self_conductance(l, beta) for l in range(1, circuit.L + 1)]
    v = circuit.to_normalised(init) if init is not None else circuit.zeros_state(v_in.shape[0])
    for _ in range(int(n_iter)):
        v = circuit.sweep(v, input_drive, a, beta, tgt)
    v_out = circuit.output_voltages(v)
    return (v_out, circuit.to_physical(v)) if return_state else v_out


def bptt_input_gradient(net, x, loss_fn, n_iter, *, tol_A=1e-9, device=None,
                        dtype=None) -> InputGradient:
    """``dL/dx`` by backpropagation through ``n_iter`` unrolled free-phase sweeps.

    loss_fn: ``v_out (B, K) tensor -> (B,)`` per-sample losses (or a scalar, then
    ``loss`` is reported as NaN per sample). ``converged``/``residual_A`` report whether
    the unrolled state's KCL residual (A) is within ``tol_A``: a gradient through too few
    sweeps is flagged, not hidden.
    """
    circuit = _as_circuit(net, x, device, dtype)
    xt = (x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x, dtype=np.float64)))
    xt = xt.detach().to(device=circuit.device, dtype=circuit.dtype).requires_grad_(True)
    with torch.enable_grad():
        v_out, v = circuit_forward(circuit, xt, n_iter, return_state=True)
        total, per = _per_sample(loss_fn(v_out), xt.shape[0])
        (g,) = torch.autograd.grad(total, xt)
    with torch.no_grad():
        v = circuit.to_normalised([s.detach() for s in v])
        res = circuit.residual(v, circuit.drive_out(0, circuit.input_voltages(xt.detach())))
    res_A = res.to(torch.float64).cpu().numpy() * circuit.g_unit_S
    gx = g if torch.is_tensor(x) else g.to(torch.float64).cpu().numpy()
    if torch.is_tensor(x):
        gx = gx.to(device=x.device, dtype=x.dtype)
    loss = per.detach().cpu().numpy() if per is not None else np.full(xt.shape[0], np.nan)
    return InputGradient(gx, loss, v_out.detach().to(torch.float64).cpu().numpy(), res_A <= tol_A,
                         res_A, "bptt", {"n_iter": int(n_iter)})


# ---- 2. implicit differentiation ---------------------------------------------------------
def _hessian_apply(circuit, p, a, diag_extra, mask):
    """``H_FF p`` for a list of (B, n_l) tensors: ``a p - W-neighbour currents``, masked.

    a: list of (n_l,) self-conductances; diag_extra: list of (B, n_l) diode conductances or
    None; mask: list of (B, n_l) 0/1 free-node masks.
    """
    out = []
    L = circuit.L
    for l in range(1, L + 1):
        q = a[l - 1] * p[l - 1]
        if diag_extra is not None:
            q = q + diag_extra[l - 1] * p[l - 1]
        if l > 1:
            q = q - circuit.drive_out(l - 1, p[l - 2])
        if l < L:
            q = q - circuit.drive_in(l, p[l])
        out.append(q * mask[l - 1])
    return out


def _batched_cg(apply, rhs, tol_rel, max_iter, inv_diag=None):
    """Solve ``H x = rhs`` per sample by conjugate gradients; H SPD on the masked subspace.

    rhs: list of (B, n_l). inv_diag: optional list of (B, n_l) Jacobi preconditioner
    ``1 / diag(H)`` (zero off the masked subspace). Returns ``(x, rel_residual (B,),
    iterations)``, the residual relative to ``rhs`` in the unpreconditioned norm.
    """
    def dot(u, v):
        return sum((ui * vi).sum(dim=1) for ui, vi in zip(u, v))

    def precondition(u):  # every update below is out of place: no copies needed
        return u if inv_diag is None else [m * t for m, t in zip(inv_diag, u)]

    x = [torch.zeros_like(r) for r in rhs]
    r = list(rhs)
    z = precondition(r)
    p = list(z)
    rz = dot(r, z)
    b_norm = dot(rhs, rhs).sqrt()
    tiny = torch.finfo(rz.dtype).tiny
    it = 0
    for it in range(1, max_iter + 1):
        ap = apply(p)
        p_ap = dot(p, ap)
        alpha = torch.where(p_ap > 0, rz / torch.clamp(p_ap, min=tiny), torch.zeros_like(rz))
        x = [xi + alpha[:, None] * pi for xi, pi in zip(x, p)]
        r = [ri - alpha[:, None] * api for ri, api in zip(r, ap)]
        if bool((dot(r, r).sqrt() <= tol_rel * b_norm).all()):
            break
        z = precondition(r)
        rz_new = dot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.clamp(rz, min=tiny), torch.zeros_like(rz))
        p = [zi + beta[:, None] * pi for zi, pi in zip(z, p)]
        rz = rz_new
    # true residual of the returned solution
    hx = apply(x)
    true = dot([ri - hi for ri, hi in zip(rhs, hx)], [ri - hi for ri, hi in zip(rhs, hx)]).sqrt()
    rel = torch.where(b_norm > 0, true / torch.clamp(b_norm, min=tiny), torch.zeros_like(true))
    return x, rel, it


def implicit_input_gradient(net, x, loss_fn, *, beta=0.0, target_V=None, tol_A=1e-12,
                            max_iter=5000, lin_tol=None, lin_max_iter=2000, jacobi=True, device=None,
                            dtype=None, strict=True, equilibrium=None) -> InputGradient:
    """``dL/dx`` at the equilibrium by implicit differentiation of KCL (see module docstring).

    Args:
        net: :class:`ResistiveNetwork` or :class:`TorchCircuit`.
        x: (B, C, H, W) images in [0, 1] (tensor or array).
        loss_fn: ``v_out (B, K) tensor -> (B,)`` per-sample losses (or a scalar).
        beta, target_V: differentiate at a nudged equilibrium instead (default: free phase).
        tol_A: KCL tolerance of the equilibrium solve (A); max_iter: its sweeps.
        lin_tol: relative residual of the adjoint solve (default 1e-10 in float64, 1e-5 in
            float32); lin_max_iter: its CG iterations; jacobi: precondition the CG with
            ``1 / diag(H)`` (the nodes' self-conductances differ across a layer by the number of
            crossbar lines meeting them, and the diodes' small-signal conductances more; the
            preconditioned CG needs several times fewer iterations on the deep circuit CNN).
        strict: raise :class:`ConvergenceError` when a sample's equilibrium or adjoint solve
            missed its tolerance; otherwise report it through ``converged``.
        equilibrium: optional :class:`Equilibrium` of these images at this ``beta`` from any
            backend (e.g. the numba solve an attack already ran): used instead of solving
            again; its KCL residual is recomputed here and checked against ``tol_A``.

    Ideal diodes: nodes at a rail are treated as fixed (the active set is locally constant
    away from ties); Shockley diodes: every node is free and ``H`` gains the diode
    small-signal conductances ``di/dv`` at ``v*``.
    """
    circuit = _as_circuit(net, x, device, dtype)
    if beta != 0.0 and target_V is None:
        raise EpsimError("a nudged phase needs target voltages")
    if beta != 0.0 and circuit.ce_p:
        raise EpsimError("implicit input gradients at a cross-entropy-nudged equilibrium are not "
                         "supported: differentiate at the free phase (beta 0)")
    if lin_tol is None:
        lin_tol = 1e-10 if circuit.dtype == torch.float64 else 1e-5
    with torch.no_grad():
        v_in = circuit.input_voltages(x.detach() if torch.is_tensor(x) else x)
        drive0 = circuit.drive_out(0, v_in)
        tgt = circuit.tensor(target_V) if beta != 0.0 else None
        if equilibrium is None:
            v, sweeps = solve_tensors(circuit, drive0, beta, tgt, None, tol_A, max_iter)
        else:
            if equilibrium.beta != beta or len(equilibrium.v_free) != circuit.L:
                raise EpsimError("the equilibrium passed was solved at another beta or for another model")
            if not np.allclose(equilibrium.v_input, v_in.to(torch.float64).cpu().numpy(), rtol=0, atol=1e-12):
                raise EpsimError("the equilibrium passed was solved for other input images")
            v, sweeps = circuit.to_normalised(equilibrium.v_free), equilibrium.certificate.iterations
        res_A = circuit.residual(v, drive0, beta, tgt).to(torch.float64).cpu().numpy() * circuit.g_unit_S
    batch = v_in.shape[0]
    with torch.enable_grad():
        u_out = v[-1].detach().requires_grad_(True)
        total, per = _per_sample(loss_fn(circuit.output_voltages(v[:-1] + [u_out])), batch)
        (g_out,) = torch.autograd.grad(total, u_out)
    with torch.no_grad():
        a = [circuit.self_conductance(l, beta) for l in range(1, circuit.L + 1)]
        if circuit.shockley:
            mask = [torch.ones_like(s) for s in v]
            diag = [circuit.diode_current(l + 1, s)[1] for l, s in enumerate(v)]
        else:
            mask = [((s > circuit.lo[l]) & (s < circuit.hi[l])).to(s.dtype) for l, s in enumerate(v)]
            diag = None
        rhs = [torch.zeros_like(s) for s in v]
        rhs[-1] = g_out * mask[-1]
        h_diag = [a_l * m if d is None else (a_l + d) * m
                  for a_l, d, m in zip(a, diag if diag is not None else [None] * len(a), mask)]
        inv_diag = [torch.where(h > 0, 1.0 / torch.where(h > 0, h, torch.ones_like(h)), torch.zeros_like(h))
                    for h in h_diag]
        lam, rel, lin_iters = _batched_cg(lambda p: _hessian_apply(circuit, p, a, diag, mask),
                                          rhs, lin_tol, lin_max_iter, inv_diag if jacobi else None)
        g_vin = circuit.drive_in(0, lam[0])
    converged = (res_A <= tol_A) & (rel.to(torch.float64).cpu().numpy() <= 10.0 * lin_tol)
    if strict and not converged.all():
        bad = int((~converged).sum())
        raise ConvergenceError(
            f"implicit input gradient: {bad}/{batch} samples did not converge (max KCL residual "
            f"{res_A.max():.3g} A vs tol {tol_A:.3g} A after {sweeps} sweeps; max adjoint "
            f"relative residual {float(rel.max()):.3g} vs {lin_tol:.3g}); raise max_iter")
    loss = per.detach().to(torch.float64).cpu().numpy() if per is not None else np.full(batch, np.nan)
    return InputGradient(_grad_x_from_v_in(circuit, g_vin, x), loss,
                         circuit.output_voltages(v).to(torch.float64).cpu().numpy(), converged, res_A,
                         "implicit",
                         {"sweeps": sweeps, "adjoint_iterations": lin_iters,
                          "adjoint_rel_residual": rel.to(torch.float64).cpu().numpy(),
                          "free_fraction": float(sum(m.sum() for m in mask) / sum(m.numel() for m in mask))})


# ---- 3. EP estimate from the input sources' currents ------------------------------------
def input_source_currents_A(net, v_input, v_1) -> np.ndarray:
    """(B, n_0) current (A) each input source delivers into the network.

    ``I_i = sum_j G_ij (v_in_i - v_1j)`` over the first crossbar; v_input (B, n_0) and
    v_1 (B, n_1) are node voltages (V).
    """
    conn, w = net.connections[0], net.w[0]
    i_n = v_input * conn.degree_in(w)[None, :] - conn.drive_in(w, np.ascontiguousarray(v_1))
    return i_n * net.ranges.g_unit_S


def ep_input_gradient(net, solver, x, labels_or_target, beta, *, target_high_V=1.0,
                      strict=True, free=None) -> InputGradient:
    """EP estimate of ``dL/dx`` for ``L = 1/2 ||v_out - y||^2`` from measured source currents.

    Runs the free phase and the ``+beta`` / ``-beta`` phases (warm-started from the free
    state) with any backend's ``solver`` and returns
    ``dL/dv_in = (I^{+beta} - I^{-beta}) / (2 beta g_unit)`` chained to the images.

    The nudge is always the squared-error one (a conductance to the targets), also on a
    circuit trained with the cross-entropy nudge: here it is a measuring instrument.

    Args:
        net: :class:`ResistiveNetwork`; solver: a backend (``get_solver(...)``).
        x: (B, C, H, W) images in [0, 1] (tensor or array; the gradient comes back alike).
        labels_or_target: (B,) integer labels (targets: ``target_high_V`` on the label, 0 V
            elsewhere) or (B, K) target voltages (V).
        beta: nudging strength (> 0; small for an accurate estimate, error O(beta^2)).
        strict: raise :class:`ConvergenceError` if any phase of any sample is unconverged;
            otherwise flag them in ``converged``.
        free: optional free-phase :class:`Equilibrium` of these images already solved with
            ``solver``: used instead of solving it again.
    """
    if not (np.isfinite(beta) and beta > 0):
        raise EpsimError("beta must be a positive number")
    x_np = x.detach().to(torch.float64).cpu().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
    if x_np.ndim == 3:
        x_np = x_np[None]
    y = np.asarray(labels_or_target.detach().cpu().numpy() if torch.is_tensor(labels_or_target)
                   else labels_or_target)
    if y.ndim == 1 and y.shape[0] == x_np.shape[0]:
        if not np.issubdtype(y.dtype, np.integer):
            raise EpsimError("labels must be integers (or pass (B, K) target voltages)")
        target = one_hot_targets(y, net.num_outputs, target_high_V)
    elif y.ndim == 2 and y.shape == (x_np.shape[0], net.num_outputs):
        target = y.astype(np.float64)
    else:
        raise EpsimError(f"labels_or_target must be ({x_np.shape[0]},) labels or "
                         f"({x_np.shape[0]}, {net.num_outputs}) target voltages, got shape {y.shape}")
    net = net.with_cost("squared-error")
    prepared = solver.prepare(net, net.input_voltages(x_np))
    if free is None:
        free = solver.solve(prepared, 0.0)
    elif free.beta != 0.0 or not np.array_equal(free.v_input, prepared.v_input):
        raise EpsimError("the free equilibrium passed was solved at another beta or for other input images")
    plus = solver.solve(prepared, beta, target, init=free.v_free)
    minus = solver.solve(prepared, -beta, target, init=free.v_free)
    converged = free.certificate.converged & plus.certificate.converged & minus.certificate.converged
    residual = np.maximum.reduce([free.certificate.residual_A, plus.certificate.residual_A,
                                  minus.certificate.residual_A])
    if strict and not converged.all():
        bad = int((~converged).sum())
        raise ConvergenceError(
            f"EP input gradient: {bad}/{len(converged)} samples did not converge in all three "
            f"phases (max KCL residual {residual.max():.3g} A); raise max_iter or loosen tol")
    i_plus = input_source_currents_A(net, plus.v_input, plus.v_free[0])
    i_minus = input_source_currents_A(net, minus.v_input, minus.v_free[0])
    if plus.response_V is not None and minus.response_V is not None:
        # the currents' difference from the first layer's own responses: linear in them, and
        # exact where the responses are far below the voltages
        di = -net.connections[0].drive_in(net.w[0], plus.response_V[0] - minus.response_V[0]) * net.ranges.g_unit_S
    else:
        di = i_plus - i_minus
    # with amplifiers the output cost carries 1 / P_L^2 in the co-content the circuit minimises
    g_vin = di * net.layer_scale[-1] ** 2 / (2.0 * beta * net.ranges.g_unit_S)
    c, h, w = net.image_shape
    g = g_vin.reshape(-1, 2 * c, h, w)
    gx = net.input_gain_V * (g[:, :c] - g[:, c:])
    if torch.is_tensor(x):
        gx = torch.as_tensor(gx, device=x.device,
                             dtype=x.dtype if x.dtype.is_floating_point else torch.float64).reshape(x.shape)
    loss = 0.5 * np.sum((free.v_output - target) ** 2, axis=1)
    return InputGradient(gx, loss, free.v_output, converged, residual, "ep",
                         {"source_current_plus_A": i_plus, "source_current_minus_A": i_minus,
                          "beta": float(beta)})
