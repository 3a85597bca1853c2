"""The EP gradient of a dense crossbar, held in factored (low-rank) form.

For a dense crossbar the centered-EP gradient is a difference of summed squared drops,
``sum_b (a_bi - c_bj)^2`` over the two nudged phases, which expands to

    G[i, j] = scale * (u[i] + v[j] - 2 * sum_r P[r, i] Q[r, j])

with ``u``/``v`` the per-node differences of summed squared voltages and ``P``/``Q`` at most
two batches of node voltages. Materialising ``G`` (``n_in x n_out`` float64) and then
updating the conductances and momentum costs several passes over memory per batch; the
kernels here compute each row of ``G`` in cache and apply the SGD step to it at once.
"""
from __future__ import annotations

import numba as nb
import numpy as np


class LowRankGrad:
    """``G = scale * (u[:, None] + v[None, :] - 2 P.T @ Q)``, shape ``(n_in, n_out)``.

    u: (n_in,), v: (n_out,), P: (R, n_in), Q: (R, n_out), float64; units V^2 once scaled.
    ``zero``: True when the two phases' voltages are identical, so that ``G`` is exactly 0.
    """

    def __init__(self, u, v, P, Q, scale, zero):
        self.u = np.ascontiguousarray(u, dtype=np.float64)
        self.v = np.ascontiguousarray(v, dtype=np.float64)
        self.P = np.ascontiguousarray(P, dtype=np.float64)
        self.Q = np.ascontiguousarray(Q, dtype=np.float64)
        self.scale = float(scale)
        self.zero = bool(zero)
        self.shape = (self.u.size, self.v.size)
        self.sq_sum = None  # sum of squared entries, once an update has computed it

    def scaled(self, factor: float) -> "LowRankGrad":
        return LowRankGrad(self.u, self.v, self.P, self.Q, self.scale * factor, self.zero)

    def dense(self) -> np.ndarray:
        return self.scale * (self.u[:, None] + self.v[None, :] - 2.0 * (self.P.T @ self.Q))

    def rms(self) -> float:
        """Root mean square of the entries of ``G``: from the last :meth:`sgd_step`, else from
        the factors (no n_in x n_out work)."""
        if self.zero:
            return 0.0
        if self.sq_sum is not None:
            return float(np.sqrt(self.sq_sum / (self.shape[0] * self.shape[1])))
        n_in, n_out = self.shape
        pu, qv = self.P @ self.u, self.Q @ self.v
        s = (n_out * self.u @ self.u + n_in * self.v @ self.v + 2.0 * self.u.sum() * self.v.sum()
             - 4.0 * (self.Q.sum(axis=1) @ pu) - 4.0 * (self.P.sum(axis=1) @ qv)
             + 4.0 * np.sum((self.P @ self.P.T) * (self.Q @ self.Q.T)))
        return abs(self.scale) * float(np.sqrt(max(s, 0.0) / (n_in * n_out)))

    def sgd_step(self, w, lr, lo, hi, momentum=0.0, m=None):
        """In place: ``m <- momentum m + G`` (when ``m`` is given), ``w <- clip(w - lr m, lo, hi)``
        (or ``w - lr G`` without momentum), one pass over ``w`` (and ``m``)."""
        use_m = m is not None
        partial = np.zeros((w.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK)
        _sgd_rows(w, m if use_m else np.empty((0, 0)), use_m, float(momentum), float(lr), self.scale,
                  self.u, self.v, self.P, self.Q, float(lo), float(hi), partial)
        self.sq_sum = float(partial.sum())


def dense_drop_diff(diff_in, diff_out, sum_in, sum_out) -> LowRankGrad:
    """``Dense.drop_product_sum`` of a dense crossbar as factors (scale 1): the difference of
    the two phases' summed squared drops, from the ``(B, n_in)`` / ``(B, n_out)`` differences
    ``v^+ - v^-`` and sums ``v^+ + v^-`` of their voltages (``diff_in`` None: the input
    side, the sources, does not move)."""
    u_out = np.einsum("bj,bj->j", diff_out, sum_out)
    if diff_in is None:
        return LowRankGrad(np.zeros(sum_in.shape[1]), u_out, sum_in, 0.5 * diff_out, 1.0, not np.any(diff_out))
    u_in = np.einsum("bi,bi->i", diff_in, sum_in)
    zero = not (np.any(diff_in) or np.any(diff_out))
    return LowRankGrad(u_in, u_out, np.concatenate([diff_in, sum_in]), 0.5 * np.concatenate([sum_out, diff_out]),
                       1.0, zero)


def as_dense(g) -> np.ndarray:
    return g.dense() if isinstance(g, LowRankGrad) else g


def grad_rms(g) -> float:
    return g.rms() if isinstance(g, LowRankGrad) else float(np.sqrt(np.mean(np.square(g))))


def grad_is_zero(g) -> bool:
    return g.zero if isinstance(g, LowRankGrad) else not np.any(g)


ROWS_PER_TASK = 64


@nb.njit(parallel=True, cache=True, fastmath=True)
def _sgd_rows(w, m, use_m, momentum, lr, scale, u, v, P, Q, lo, hi, sq_sum):
    """The update of :meth:`LowRankGrad.sgd_step`; ``sq_sum[t]`` gets the sum of squared
    gradient entries of row block ``t``."""
    n_in, n_out = w.shape
    rank = P.shape[0]
    for t in nb.prange((n_in + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        row = np.empty(n_out)
        acc = 0.0
        for i in range(t * ROWS_PER_TASK, min(n_in, (t + 1) * ROWS_PER_TASK)):
            for j in range(n_out):
                row[j] = u[i] + v[j]
            for r in range(rank):
                p = -2.0 * P[r, i]
                if p != 0.0:
                    for j in range(n_out):
                        row[j] += p * Q[r, j]
            for j in range(n_out):
                g = scale * row[j]
                acc += g * g
                if use_m:
                    g += momentum * m[i, j]
                    m[i, j] = g
                x = w[i, j] - lr * g
                if x < lo:
                    x = lo
                elif x > hi:
                    x = hi
                w[i, j] = x
        sq_sum[t] = acc
