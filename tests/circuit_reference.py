"""Independent reference solves of a layered resistive network, built element by element.

The conductance matrix is assembled from each connection's explicit ``pairs()`` list (one
entry per physical conductance), not from the block operators the solvers use:

- ideal diodes: the steady state minimises the convex co-content ``1/2 v^T H v - q^T v``
  subject to the diode box constraints; with ``H = L L^T`` this is the bounded linear
  least-squares problem ``min ||L^T v - L^{-1} q||`` solved exactly by scipy's BVLS.
- Shockley diodes: damped Newton on the full KCL system with a dense Jacobian.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import lsq_linear


def assemble(net, v_input, beta=0.0, target_V=None):
    """Dense normalised conductance matrix ``H`` (n, n) over the free nodes and drive ``q`` (B, n)."""
    sizes = net.layer_sizes
    offsets = np.concatenate([[0], np.cumsum(sizes[1:])])
    n = int(offsets[-1])
    H = np.zeros((n, n))
    q = np.zeros((v_input.shape[0], n))
    for l, conn in enumerate(net.connections):
        t, i, j = conn.pairs()
        g = net.w[l].reshape(-1)[t]
        jj = offsets[l] + j  # output node of the conductance, always free
        np.add.at(H, (jj, jj), g)
        if l == 0:
            np.add.at(q.T, jj, (g[:, None] * v_input[:, i].T))
        else:
            ii = offsets[l - 1] + i
            np.add.at(H, (ii, ii), g)
            np.add.at(H, (ii, jj), -g)
            np.add.at(H, (jj, ii), -g)
    for l in range(1, net.num_layers + 1):
        q[:, offsets[l - 1]:offsets[l]] += net.bias_per_node(l)
    if beta != 0.0:
        out = slice(offsets[-2], offsets[-1])
        H[out, out] += beta * np.eye(sizes[-1])
        q[:, out] += beta * target_V
    lo = np.concatenate(net.rail_lo_V)
    hi = np.concatenate(net.rail_hi_V)
    return H, q, lo, hi, offsets


def split(v, offsets):
    return [v[:, offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]


def solve_ideal(net, v_input, beta=0.0, target_V=None):
    """Exact constrained minimiser (ideal diodes) per sample; list of (B, n_l) arrays."""
    H, q, lo, hi, offsets = assemble(net, v_input, beta, target_V)
    L = cholesky(H, lower=True)
    v = np.zeros_like(q)
    for b in range(q.shape[0]):
        rhs = solve_triangular(L, q[b], lower=True)
        res = lsq_linear(L.T, rhs, bounds=(lo, hi), method="bvls", tol=1e-15, max_iter=10000)
        v[b] = res.x
    return split(v, offsets)


def solve_shockley(net, v_input, beta=0.0, target_V=None, iters=200):
    """Damped Newton on KCL with Shockley clamp diodes; list of (B, n_l) arrays."""
    H, q, lo, hi, offsets = assemble(net, v_input, beta, target_V)
    is_n = net.diode.is_A / net.ranges.g_unit_S
    nvt = net.diode.n_vt_V
    has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
    lo0, hi0 = np.where(has_lo, lo, 0.0), np.where(has_hi, hi, 0.0)

    def current(v):
        e_hi = np.where(has_hi, np.exp(np.minimum((v - hi0) / nvt, 300.0)), 1.0)
        e_lo = np.where(has_lo, np.exp(np.minimum((lo0 - v) / nvt, 300.0)), 1.0)
        i = is_n * (e_hi - 1.0) - is_n * (e_lo - 1.0)
        di = is_n * (np.where(has_hi, e_hi, 0.0) + np.where(has_lo, e_lo, 0.0)) / nvt
        return i, di

    v_all = np.zeros_like(q)
    for b in range(q.shape[0]):
        v = np.linalg.solve(H, q[b])
        v = np.clip(v, np.where(has_lo, lo0 - 1.0, -np.inf), np.where(has_hi, hi0 + 1.0, np.inf))
        for _ in range(iters):
            i, di = current(v)
            f = H @ v - q[b] + i
            step = np.linalg.solve(H + np.diag(di), f)
            step = np.clip(step, -4 * nvt, 4 * nvt)  # junction limiting
            v = v - step
            if np.max(np.abs(step)) < 1e-15 * (1 + np.max(np.abs(v))):
                break
        v_all[b] = v
    return split(v_all, offsets)
