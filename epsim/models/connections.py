"""Resistive connections between two adjacent layers of a layered circuit.

A connection is a set of conductances ``g[t]`` (one *tied* value per parameter index
``t``) each placed between an input node ``i`` and an output node ``j``. In normalised
units (conductance / g_unit) a connection provides the linear maps the solver needs:

- ``drive_out(w, v_in)[b, j] = sum_i w_ij v_in[b, i]``   (current into j from the input side)
- ``drive_in(w, v_out)[b, i] = sum_j w_ij v_out[b, j]``  (current into i from the output side)
- ``degree_out(w)[j] = sum_i w_ij`` and ``degree_in(w)[i] = sum_j w_ij`` (self-conductances)
- ``sq_drop_sum(v_in, v_out)[t] = sum_b sum_{(i,j) in t} (v_in[b,i] - v_out[b,j])**2``,
  the local quantity of the EP learning rule (V^2), summed over the batch, and
  ``sq_drop_diff`` the difference of two such sums (the two nudged phases), computed as
  ``drop_product_sum``: with ``D = v^+ - v^-`` and ``S = v^+ + v^-`` per node,
  ``(d^+)^2 - (d^-)^2 = (D_i - D_j)(S_i - S_j)`` for the drop ``d = v_i - v_j``, which keeps
  the precision of ``D`` (a nudge response can be many orders below the voltages, where
  the difference of the two squares is rounding).

A padded conv layer also has conductances ``g[t]`` from an output node ``j`` to the 0 V
rail (``pad_pairs()``): they add to ``degree_out`` and, with ``v_in = 0`` at the rail, to
``sq_drop_sum``, but drive no current.

All node arrays are flat, shape ``(batch, n_nodes)``, float64, in volts.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..errors import EpsimError


# Up to this many samples the dense drives run in the kernels below: BLAS packs the whole
# conductance matrix for every product, which for a few rows costs more than the product,
# and the kernels skip the nodes at exactly 0 V (clamped hidden units, black pixels).
SMALL_BATCH = 32


@nb.njit(cache=True, fastmath=True)
def _dense_drive_out(v_in, w, out):
    """``out = v_in @ w`` (B, n_out) streaming the rows of ``w`` once, skipping zero inputs."""
    out[:, :] = 0.0
    for i in range(w.shape[0]):
        row = w[i]
        for b in range(v_in.shape[0]):
            a = v_in[b, i]
            if a != 0.0:
                o = out[b]
                for j in range(row.shape[0]):
                    o[j] += a * row[j]


@nb.njit(cache=True, fastmath=True)
def _dense_drive_in(v_out, w, out):
    """``out = v_out @ w.T`` (B, n_in): one dot product per row of ``w`` and sample."""
    for i in range(w.shape[0]):
        row = w[i]
        for b in range(v_out.shape[0]):
            acc = 0.0
            for j in range(row.shape[0]):
                acc += row[j] * v_out[b, j]
            out[b, i] = acc


@nb.njit(cache=True, fastmath=True)
def _column_sums(w):
    """``w.sum(axis=0)``, streaming the rows (numpy's axis-0 reduction is ~2.5x slower here)."""
    out = np.zeros(w.shape[1])
    for i in range(w.shape[0]):
        row = w[i]
        for j in range(row.shape[0]):
            out[j] += row[j]
    return out


@nb.njit(cache=True, fastmath=True)
def _row_sums(w):
    """``w.sum(axis=1)``."""
    out = np.empty(w.shape[0])
    for i in range(w.shape[0]):
        acc = 0.0
        row = w[i]
        for j in range(row.shape[0]):
            acc += row[j]
        out[i] = acc
    return out


class Dense:
    """All-to-all crossbar: ``g`` has shape ``(n_in, n_out)``."""

    kind = "dense"

    def __init__(self, in_shape: tuple, out_shape: tuple):
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.n_in = int(np.prod(in_shape))
        self.n_out = int(np.prod(out_shape))
        self.param_shape = (self.n_in, self.n_out)

    @property
    def fan_in(self) -> int:
        return self.n_in

    def describe(self) -> dict:
        return {"kind": self.kind, "in_shape": list(self.in_shape), "out_shape": list(self.out_shape)}

    def drive_out(self, w, v_in):
        if v_in.shape[0] <= SMALL_BATCH and w.flags.c_contiguous:
            out = np.empty((v_in.shape[0], self.n_out))
            _dense_drive_out(np.ascontiguousarray(v_in, dtype=np.float64), w, out)
            return out
        return v_in @ w

    def drive_in(self, w, v_out):
        if v_out.shape[0] <= SMALL_BATCH and w.flags.c_contiguous:
            out = np.empty((v_out.shape[0], self.n_in))
            _dense_drive_in(np.ascontiguousarray(v_out, dtype=np.float64), w, out)
            return out
        return v_out @ w.T

    def degree_out(self, w):
        return _column_sums(np.ascontiguousarray(w, dtype=np.float64))

    def degree_in(self, w):
        return _row_sums(np.ascontiguousarray(w, dtype=np.float64))

    def sq_drop_sum(self, v_in, v_out):
        # sum_b (a_i - b_j)^2 = sum_b a_i^2 + sum_b b_j^2 - 2 (a^T b)_ij : a low-rank product.
        sq_in = np.einsum("bi,bi->i", v_in, v_in)
        sq_out = np.einsum("bj,bj->j", v_out, v_out)
        return sq_in[:, None] + sq_out[None, :] - 2.0 * (v_in.T @ v_out)

    def sq_drop_diff(self, in_p, out_p, in_m, out_m):
        """``sq_drop_sum(in_p, out_p) - sq_drop_sum(in_m, out_m)`` (see :meth:`drop_product_sum`)."""
        return _sq_drop_diff(self, in_p, out_p, in_m, out_m)

    def drop_product_sum(self, diff_in, diff_out, sum_in, sum_out):
        """``[t] = sum_b sum_{(i,j) in t} (diff_in[b,i] - diff_out[b,j]) (sum_in[b,i] - sum_out[b,j])``.

        With ``diff = v^+ - v^-`` and ``sum = v^+ + v^-`` of two phases this is the difference
        of their summed squared drops, to the precision of ``diff``. ``diff_in`` None: the
        input side does not move (the input sources).
        """
        out = np.einsum("bj,bj->j", diff_out, sum_out)[None, :] - sum_in.T @ diff_out
        if diff_in is None:
            return out
        return out + np.einsum("bi,bi->i", diff_in, sum_in)[:, None] - diff_in.T @ sum_out

    def pairs(self):
        """(param_index, in_node, out_node) for every conductance; for export and tests."""
        i, j = np.meshgrid(np.arange(self.n_in), np.arange(self.n_out), indexing="ij")
        t = np.arange(self.n_in * self.n_out)
        return t, i.ravel(), j.ravel()

    def pad_pairs(self):
        """(param_index, out_node) of conductances to the 0 V rail: none in a dense crossbar."""
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()


class Conv2d:
    """Locally connected resistive layer with tied (weight-shared) conductances.

    ``g`` has shape ``(c_out, c_in, k, k)``; output node ``(co, y, x)`` connects to input
    node ``(ci, y*stride + dy - p, x*stride + dx - p)`` through ``g[co, ci, dy, dx]``.

    Zero padding ``p`` (``padding``, default 0: "valid"): the kernel positions that fall
    outside the input connect the output node through the same tied conductance to the 0 V
    rail (ground). Equivalently, a valid convolution of the input zero-padded by ``p``, whose
    pad entries are fixed at 0 V and are not free nodes: a border output node carries the
    full kernel's conductance on its diagonal (:meth:`degree_out`), the pad drives no current
    into it (:meth:`drive_out`), and the learning rule's squared drops include the pad
    positions' ``(0 - v_j)^2`` (:meth:`sq_drop_sum`). :meth:`pairs` lists the conductances
    between two nodes, :meth:`pad_pairs` those from an output node to the rail.
    """

    kind = "conv"

    def __init__(self, in_shape: tuple, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        if len(in_shape) != 3:
            raise EpsimError(f"a conv layer needs a (C, H, W) input, got shape {tuple(in_shape)}")
        c_in, h, w = in_shape
        if not 0 <= padding < kernel:
            raise EpsimError(f"conv padding {padding} must be at least 0 and smaller than the kernel {kernel}")
        if kernel > h + 2 * padding or kernel > w + 2 * padding:
            raise EpsimError(f"conv kernel {kernel} larger than its {h}x{w} input"
                             + (f" padded by {padding}" if padding else ""))
        self.in_shape = tuple(int(s) for s in in_shape)
        self.kernel = int(kernel)
        self.stride = int(stride)
        self.padding = int(padding)
        self.padded_shape = (int(c_in), int(h) + 2 * self.padding, int(w) + 2 * self.padding)
        h_out = (self.padded_shape[1] - kernel) // stride + 1
        w_out = (self.padded_shape[2] - kernel) // stride + 1
        self.out_shape = (int(c_out), h_out, w_out)
        self.n_in = int(np.prod(self.in_shape))
        self.n_out = int(np.prod(self.out_shape))
        self.param_shape = (int(c_out), c_in, self.kernel, self.kernel)

    @property
    def fan_in(self) -> int:
        return self.in_shape[0] * self.kernel * self.kernel

    def describe(self) -> dict:
        d = {"kind": self.kind, "in_shape": list(self.in_shape), "c_out": self.out_shape[0],
             "kernel": self.kernel, "stride": self.stride}
        if self.padding:
            d["padding"] = self.padding
        return d

    def _4d(self, v, shape):
        return np.ascontiguousarray(v).reshape((v.shape[0],) + shape)

    def _padded_input(self, v_in):
        """(B, C, H + 2p, W + 2p) input voltages (V) with the 0 V pad (the input itself when p = 0)."""
        x = self._4d(v_in, self.in_shape)
        if not self.padding:
            return x
        return _zero_pad(np.ascontiguousarray(x, dtype=np.float64), self.padding)

    def drive_out(self, w, v_in):
        out = np.zeros((v_in.shape[0],) + self.out_shape)
        _conv_forward(w, self._padded_input(v_in), self.stride, out)
        return out.reshape(v_in.shape[0], -1)

    def drive_in(self, w, v_out):
        out = np.zeros((v_out.shape[0],) + self.in_shape)
        y = self._4d(v_out, self.out_shape)
        if self.padding:
            _conv_transpose_padded(w, np.ascontiguousarray(y, dtype=np.float64), self.stride, self.padding, out)
        else:
            _conv_transpose(w, y, self.stride, out)
        return out.reshape(v_out.shape[0], -1)

    def degree_out(self, w):
        """(n_out,) total conductance at each output node: the whole kernel at every
        position, the pad's conductances to the rail included."""
        out = np.zeros((1,) + self.out_shape)
        _conv_forward(w, np.ones((1,) + self.padded_shape), self.stride, out)
        return out.reshape(-1)

    def degree_in(self, w):
        return self.drive_in(w, np.ones((1, self.n_out)))[0]

    def sq_drop_sum(self, v_in, v_out):
        """(c_out, c_in, k, k) summed squared drops (V^2), the pad's ``(0 - v_j)^2`` included."""
        return self.drop_product_sum(v_in, v_out, v_in, v_out)

    def sq_drop_diff(self, in_p, out_p, in_m, out_m):
        """``sq_drop_sum(in_p, out_p) - sq_drop_sum(in_m, out_m)`` (see :meth:`drop_product_sum`)."""
        return _sq_drop_diff(self, in_p, out_p, in_m, out_m)

    def drop_product_sum(self, diff_in, diff_out, sum_in, sum_out):
        """(c_out, c_in, k, k) ``sum_b sum_{(i,j) in t} (diff_in_i - diff_out_j)(sum_in_i - sum_out_j)``,
        the pad's positions (0 V in both) included; see :meth:`Dense.drop_product_sum`
        (``diff_in`` None: zeros)."""
        if diff_in is None:
            diff_in = np.zeros_like(sum_in)
        per_sample = np.zeros((sum_in.shape[0],) + self.param_shape)
        _conv_drop_product(self._padded_input(diff_in), self._4d(diff_out, self.out_shape),
                           self._padded_input(sum_in), self._4d(sum_out, self.out_shape),
                           self.stride, per_sample)
        return per_sample.sum(axis=0)

    def _all_pairs(self):
        """(param index, padded input position, output node) of every kernel position, and
        whether that position lies inside the input: int arrays and a bool array."""
        co, ci, k, _ = self.param_shape
        _, h_out, w_out = self.out_shape
        _, hp, wp = self.padded_shape
        a, y, x, c, dy, dx = np.meshgrid(np.arange(co), np.arange(h_out), np.arange(w_out), np.arange(ci),
                                         np.arange(k), np.arange(k), indexing="ij")
        a, y, x, c, dy, dx = (v.ravel() for v in (a, y, x, c, dy, dx))
        t = ((a * ci + c) * k + dy) * k + dx
        j = (a * h_out + y) * w_out + x
        py, px = y * self.stride + dy - self.padding, x * self.stride + dx - self.padding
        _, h, w = self.in_shape
        inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        i = (c * h + np.clip(py, 0, h - 1)) * w + np.clip(px, 0, w - 1)
        return t, i, j, inside

    def pairs(self):
        """(param_index, in_node, out_node) of every conductance between two nodes (in
        output-channel, row, column, input-channel, kernel-row, kernel-column order); for
        export and tests."""
        t, i, j, inside = self._all_pairs()
        return t[inside], i[inside], j[inside]

    def pad_pairs(self):
        """(param_index, out_node) of every conductance from an output node to the 0 V rail
        (kernel positions in the pad), in :meth:`pairs` order; empty without padding."""
        t, _, j, inside = self._all_pairs()
        return t[~inside], j[~inside]


@nb.njit(cache=True)
def _zero_pad(v, pad):
    """(B, C, H + 2 pad, W + 2 pad) copy of ``v`` (B, C, H, W) with a 0 V border."""
    b, c, h, w = v.shape
    out = np.zeros((b, c, h + 2 * pad, w + 2 * pad))
    out[:, :, pad:pad + h, pad:pad + w] = v
    return out


@nb.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _conv_forward_core(w, v_in, stride, pad, out):
    """``out`` (B, C_out, H_out, W_out) = the drive of inputs ``v_in`` (B, C_in, H, W) (V) through
    the tied conductances ``w`` (C_out, C_in, k, k) (normalised, C-contiguous) of a conv
    zero-padded by ``pad``.

    Per output position the input window (C_in, k, k) is copied into a contiguous vector (the
    pad as 0 V); each output channel's current is then the dot product of that vector with a
    contiguous row of ``w``, summed in SIMD lanes (it differs from a sequential sum by rounding
    only: about 1e-16 of the sum of the terms' magnitudes). Windows entirely at 0 V (clamped units, black pixels) are
    skipped.
    """
    co_n, ci_n, k, _ = w.shape
    m = ci_n * k * k
    w2 = w.reshape((co_n, m))
    h, wd = v_in.shape[2], v_in.shape[3]
    h_out, w_out = out.shape[2], out.shape[3]
    for b in nb.prange(v_in.shape[0]):
        win = np.empty(m)
        for y in range(h_out):
            for x in range(w_out):
                y0, x0 = y * stride - pad, x * stride - pad
                if y0 >= 0 and x0 >= 0 and y0 + k <= h and x0 + k <= wd:
                    for ci in range(ci_n):
                        for dy in range(k):
                            for dx in range(k):
                                win[(ci * k + dy) * k + dx] = v_in[b, ci, y0 + dy, x0 + dx]
                else:
                    for ci in range(ci_n):
                        for dy in range(k):
                            py = y0 + dy
                            for dx in range(k):
                                px = x0 + dx
                                inside = 0 <= py < h and 0 <= px < wd
                                win[(ci * k + dy) * k + dx] = v_in[b, ci, py, px] if inside else 0.0
                nonzero = False
                for j in range(m):
                    if win[j] != 0.0:
                        nonzero = True
                        break
                if not nonzero:
                    for co in range(co_n):
                        out[b, co, y, x] = 0.0
                    continue
                for co in range(co_n):
                    acc = 0.0
                    for j in range(m):
                        acc += w2[co, j] * win[j]
                    out[b, co, y, x] = acc


@nb.njit(parallel=True, cache=True, fastmath={"contract"})
def _conv_transpose_core(w, v_out, stride, pad, out):
    """``out`` (B, C_in, H, W) += the transpose drive of ``v_out`` (B, C_out, H_out, W_out) (V)
    through the tied conductances ``w`` (C_out, C_in, k, k) (normalised, C-contiguous) of a conv
    zero-padded by ``pad``: the current into each input node; none is computed for the pad
    (0 V, fixed).

    Per output position the currents it sends into its whole window (C_in, k, k) accumulate
    in a local vector over the output channels (contiguous rows of ``w``), skipping outputs at
    exactly 0 V, and are then added to the window's input nodes.
    """
    co_n, ci_n, k, _ = w.shape
    m = ci_n * k * k
    w2 = w.reshape((co_n, m))
    h, wd = out.shape[2], out.shape[3]
    h_out, w_out = v_out.shape[2], v_out.shape[3]
    for b in nb.prange(v_out.shape[0]):
        win = np.empty(m)
        for y in range(h_out):
            for x in range(w_out):
                win[:] = 0.0
                nonzero = False
                for co in range(co_n):
                    v = v_out[b, co, y, x]
                    if v == 0.0:
                        continue
                    nonzero = True
                    for j in range(m):
                        win[j] += w2[co, j] * v
                if not nonzero:
                    continue
                y0, x0 = y * stride - pad, x * stride - pad
                for ci in range(ci_n):
                    for dy in range(k):
                        py = y0 + dy
                        if py < 0 or py >= h:
                            continue
                        for dx in range(k):
                            px = x0 + dx
                            if px < 0 or px >= wd:
                                continue
                            out[b, ci, py, px] += win[(ci * k + dy) * k + dx]


@nb.njit(cache=True)
def _conv_forward_padded(w, v_in, stride, pad, out):
    """``out`` (B, C_out, H_out, W_out) = the drive of inputs ``v_in`` (B, C, H, W) zero-padded by
    ``pad``, through the conductances ``w`` (C_out, C_in, k, k)."""
    _conv_forward_core(np.ascontiguousarray(w), v_in, stride, pad, out)


@nb.njit(cache=True)
def _conv_transpose_padded(w, v_out, stride, pad, out):
    """``out`` (B, C, H, W) += the transpose drive of ``v_out`` (B, C_out, H_out, W_out) into the
    input nodes of a conv padded by ``pad``: the current into the pad (fixed at 0 V) is dropped."""
    _conv_transpose_core(np.ascontiguousarray(w), v_out, stride, pad, out)


@nb.njit(cache=True)
def _conv_forward(w, v_in, stride, out):
    """``out`` (B, C_out, H_out, W_out) = the drive of inputs ``v_in`` (B, C_in, H, W) (V) through
    the valid conv's conductances ``w`` (C_out, C_in, k, k) (normalised)."""
    _conv_forward_core(np.ascontiguousarray(w), v_in, stride, 0, out)


@nb.njit(cache=True)
def _conv_transpose(w, v_out, stride, out):
    """``out`` (B, C_in, H, W) += the transpose drive of ``v_out`` (B, C_out, H_out, W_out) (V)
    through the valid conv's conductances ``w`` (C_out, C_in, k, k) (normalised)."""
    _conv_transpose_core(np.ascontiguousarray(w), v_out, stride, 0, out)


def _sq_drop_diff(conn, in_p, out_p, in_m, out_m):
    """``conn.sq_drop_sum(in_p, out_p) - conn.sq_drop_sum(in_m, out_m)`` through the factored
    :meth:`drop_product_sum` (``in_p is in_m``: the input side does not move)."""
    diff_in = None if in_p is in_m else in_p - in_m
    return conn.drop_product_sum(diff_in, out_p - out_m, in_p + in_m, out_p + out_m)


@nb.njit(parallel=True, cache=True)
def _conv_drop_product(d_in, d_out, s_in, s_out, stride, out):
    """``out[b, co, ci, dy, dx] += (d_in - d_out)(s_in - s_out)`` over every kernel position;
    inputs (B, C, H, W) padded, outputs (B, C_out, H_out, W_out)."""
    co_n, ci_n, k = out.shape[1], out.shape[2], out.shape[3]
    h_out, w_out = d_out.shape[2], d_out.shape[3]
    for b in nb.prange(d_in.shape[0]):
        for co in range(co_n):
            for y in range(h_out):
                for x in range(w_out):
                    do = d_out[b, co, y, x]
                    so = s_out[b, co, y, x]
                    for ci in range(ci_n):
                        for dy in range(k):
                            for dx in range(k):
                                py, px = y * stride + dy, x * stride + dx
                                out[b, co, ci, dy, dx] += (d_in[b, ci, py, px] - do) * (s_in[b, ci, py, px] - so)


INITS = ("uniform", "clamped-uniform")


def init_conductances(conn, rng: np.random.Generator, gain: float, kind: str = "uniform") -> np.ndarray:
    """Initial normalised conductances of ``conn``, scale ``s = gain / sqrt(fan_in)``.

    - ``uniform``: uniform on ``[0, 2 s)`` (mean ``s``);
    - ``clamped-uniform``: uniform on ``(-s, s)`` clamped at 0, so about half are exactly 0
      and the rest uniform on ``[0, s)`` (mean ``s / 4``), the deep resistive networks' init.
    """
    scale = gain / math.sqrt(conn.fan_in)
    if kind == "uniform":
        return rng.uniform(0.0, 2.0 * scale, size=conn.param_shape)
    if kind == "clamped-uniform":
        return np.maximum(rng.uniform(-scale, scale, size=conn.param_shape), 0.0)
    raise EpsimError(f"unknown conductance init {kind!r}; choose from {', '.join(INITS)}")


CONNECTIONS = {"dense": Dense, "conv": Conv2d}


def connection_from_description(d: dict):
    if d["kind"] == "dense":
        return Dense(tuple(d["in_shape"]), tuple(d["out_shape"]))
    if d["kind"] == "conv":
        return Conv2d(tuple(d["in_shape"]), d["c_out"], d["kernel"], d["stride"], d.get("padding", 0))
    raise EpsimError(f"unknown connection kind {d['kind']!r}")
