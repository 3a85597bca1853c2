"""Certified robustness of a resistive circuit from its monotonicity: two solves per image.

The property. In a network of positive conductances (the leaks to 0 V among them), clamp diodes to
fixed rails (ideal or Shockley: monotone two-terminal laws), fixed bias sources and amplifiers
of positive gain,
every free node voltage at equilibrium is a non-decreasing function of every input source
voltage. Proof sketch: given its neighbours, a node's KCL ``a v - c + i_d(v) = 0`` has a
root that is non-decreasing in its drive ``c = sum_i w_i v_i + b`` (``i_d`` is increasing),
and ``c`` is non-decreasing in every neighbour and source voltage (``w >= 0``). So one
block sweep of the solver is an order-preserving map, and two sweep sequences from the same
start, one with every source at least as high as the other's, stay ordered at every sweep
and in the limit; the equilibrium is unique (strictly convex co-content), so it is the
limit. With amplifiers the same holds in the normalised voltages ``v_l / P_l``, in which
the circuit is passive (:mod:`epsim.models.resistive`), and ``P_l > 0``.

The box. The circuit's inputs are two source polarities, ``+g x`` and ``-g x``. Relaxed to
independent sources over an L∞ box of radius ε around ``x`` (pixels clipped to [0, 1]):

* upper circuit: ``+`` sources at ``g min(x + ε, 1)``, ``-`` sources at ``-g max(x - ε, 0)``;
* lower circuit: ``+`` sources at ``g max(x - ε, 0)``, ``-`` sources at ``-g min(x + ε, 1)``.

Every image of the box drives sources between the two corners, so every output voltage
lies between the lower and the upper circuit's. The image is **certified** at ε when the
lower bound of its label's output exceeds the upper bound of every other output: no image
of the box changes the prediction. L2 balls are certified through the L∞ box of the same
radius that contains them (a looser, still sound, certificate).

Assumptions, stated where they bite: the bounds are the equilibria computed to the
solver's KCL tolerance (the certificate reports the smallest certified margin, in volts,
to compare with that); both corner solves must converge, else the image is not certified;
only the free phase is used (the ``-β`` nudged phase has a negative conductance and is not
an inference circuit); an inverting amplifier (negative gain) would break monotonicity and
is refused by the model. Software EP-CNNs and BP-CNNs have signed weights and max-pool and
get no certificate from this argument.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EpsimError


@dataclass
class CertifyResult:
    """Output bounds over the box around each image.

    lower_V, upper_V: (B, K) output voltage bounds (V); certified: (B,) bool; margin_V:
    (B,) lower bound of the label's output minus the largest upper bound of the others
    (V, > 0 for certified images); converged: (B,) both corner solves met their rule;
    max_residual_A: the worst KCL residual of the corner solves.
    """

    lower_V: np.ndarray
    upper_V: np.ndarray
    certified: np.ndarray
    margin_V: np.ndarray
    converged: np.ndarray
    max_residual_A: float


def corner_voltages(net, x, eps: float) -> tuple:
    """Input source voltages ``(lower, upper)``, each (B, n_0) in V, of the L∞ box of radius
    ``eps`` around images ``x`` (B, C, H, W) in [0, 1], in :meth:`input_voltages` order."""
    if not (np.isfinite(eps) and 0 <= eps <= 1):
        raise EpsimError(f"certification radius must be in [0, 1], got {eps:g}")
    x = np.asarray(x, dtype=np.float64)
    net.input_voltages(x)  # validates shape and values
    return box_corner_voltages(net, np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0))


def box_corner_voltages(net, lo, hi) -> tuple:
    """``(lower, upper)`` input source voltages (B, n_0) of the pixel box ``[lo, hi]``
    (both (B, C, H, W)): the lower circuit has ``+`` sources at ``g lo`` and ``-`` sources at
    ``-g hi``, the upper one the opposite."""
    return net.pixels_to_voltages(lo, hi), net.pixels_to_voltages(hi, lo)


def check_monotone_circuit(net):
    """Refuse circuits the monotonicity argument does not cover."""
    if not hasattr(net, "amp_gains"):
        raise EpsimError("certification needs a circuit model (software models have signed weights "
                         "and max-pool: no monotonicity)")
    for w in net.w:
        if np.any(w < 0):
            raise EpsimError("certification needs non-negative conductances")
    if np.any(net.amp_gains <= 0):
        raise EpsimError("certification needs positive amplifier gains")
    if net.is_differential:
        raise EpsimError("certification needs a monotone circuit: differential layers (inverting "
                         "amplifiers) are not")


def certify_box(net, solver, x, y, eps: float, batch_size: int = 500) -> CertifyResult:
    """Certify images ``x`` (B, C, H, W) with labels ``y`` (B,) over the L∞ box of radius
    ``eps`` with ``solver`` (any backend: ``prepare(net, v_input)`` / ``solve``)."""
    return certify_corners(net, solver, *corner_voltages(net, x, eps), y, batch_size)


def certify_corners(net, solver, lower, upper, y, batch_size: int = 500) -> CertifyResult:
    """Certify from the corner source voltages ``lower``/``upper`` (B, n_0) of B boxes."""
    check_monotone_circuit(net)
    if hasattr(solver, "devices") and hasattr(solver, "base"):
        raise EpsimError("a solver with read noise draws new conductances for each corner: the bounds would "
                         "belong to different circuits; certify one read with certify_per_read")
    y = np.asarray(y)
    lo_out, hi_out, conv, worst = [], [], [], 0.0
    for i in range(0, len(y), batch_size):
        pair = []
        for v in (lower[i:i + batch_size], upper[i:i + batch_size]):
            eq = solver.solve(solver.prepare(net, v), 0.0)
            pair.append(eq)
            worst = max(worst, eq.certificate.max_residual_A)
        lo_out.append(pair[0].v_output)
        hi_out.append(pair[1].v_output)
        conv.append(pair[0].certificate.converged & pair[1].certificate.converged)
    lower_V, upper_V = np.concatenate(lo_out), np.concatenate(hi_out)
    converged = np.concatenate(conv)
    rows = np.arange(len(y))
    others = upper_V.copy()
    others[rows, y] = -np.inf
    margin = lower_V[rows, y] - others.max(axis=1)
    return CertifyResult(lower_V, upper_V, (margin > 0) & converged, margin, converged, worst)


def certify_per_read(net, devices, solver, x, y, eps: float, batch_size: int = 500) -> CertifyResult:
    """Certificate of one read of a crossbar with read noise: the conductances are read once
    (``devices.read``, a :class:`~epsim.learning.memristive.DeviceArray`) and both corner
    circuits use that read; the bound holds for every image of the box read with the same
    conductances, not across reads."""
    import copy

    read = copy.copy(net)
    read.w = devices.read(net.w)
    return certify_box(read, solver, x, y, eps, batch_size=batch_size)


def certify_split(net, solver, x, y, eps: float, split_pixels: int = 4, batch_size: int = 500) -> tuple:
    """A tighter certificate by splitting the box: for every image the basic box leaves
    uncertified, the ``split_pixels`` pixels with the largest margin gradient (implicit
    differentiation at the clean image, margin = runner-up minus label output) are each cut
    into ``[x - eps, x]`` and ``[x, x + eps]``, and the image is certified when all
    ``2^split_pixels`` sub-boxes are (their union is the box). Returns ``(certified (B,),
    solves (B,))``: the equilibrium solves each image cost (2, plus 2 per sub-box)."""
    import torch

    from .input_gradients import implicit_input_gradient

    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    basic = certify_box(net, solver, x, y, eps, batch_size)
    certified = basic.certified.copy()
    solves = np.full(len(y), 2)
    todo = np.flatnonzero(~certified & basic.converged)
    if len(todo) == 0 or split_pixels < 1:
        return certified, solves
    others = basic.upper_V[todo].copy()
    others[np.arange(len(todo)), y[todo]] = -np.inf
    runner = np.argmax(others, axis=1)
    idx_t = torch.as_tensor(np.arange(len(todo)))

    def margin(v):
        return v[idx_t, torch.as_tensor(runner)] - v[idx_t, torch.as_tensor(y[todo])]

    grad = implicit_input_gradient(net, x[todo], margin, tol_A=1e-12, strict=False).grad_x
    flat = np.abs(np.asarray(grad)).reshape(len(todo), -1)
    k = min(int(split_pixels), flat.shape[1])
    chosen = np.argsort(-flat, axis=1)[:, :k]
    combos = np.array(np.meshgrid(*[[0, 1]] * k, indexing="ij")).reshape(k, -1).T  # (2^k, k)
    lo0 = np.maximum(x[todo] - eps, 0.0).reshape(len(todo), -1)
    hi0 = np.minimum(x[todo] + eps, 1.0).reshape(len(todo), -1)
    mid = x[todo].reshape(len(todo), -1)
    los, his, owner = [], [], []
    for n in range(len(todo)):
        for c in combos:
            lo, hi = lo0[n].copy(), hi0[n].copy()
            p = chosen[n]
            lo[p] = np.where(c == 1, mid[n, p], lo0[n, p])
            hi[p] = np.where(c == 1, hi0[n, p], mid[n, p])
            los.append(lo)
            his.append(hi)
            owner.append(n)
    shape = (-1,) + x.shape[1:]
    lower, upper = box_corner_voltages(net, np.array(los).reshape(shape), np.array(his).reshape(shape))
    sub = certify_corners(net, solver, lower, upper, y[todo][owner], batch_size)
    ok = sub.certified.reshape(len(todo), len(combos)).all(axis=1)
    certified[todo] = ok
    solves[todo] += 2 * len(combos)
    return certified, solves
