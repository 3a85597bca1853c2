"""Exact elimination of crossbar wire resistance: tile kernels and a network's reduced system.

The crossbar layout (tiles, which node each device attaches to, netlist names) is
:mod:`epsim.circuit.crossbar`.

Exact elimination
-----------------
The wires and devices of a tile are linear, so the tile is an exact linear multiport
between its ``R + C`` port nodes (row drivers, column ends): currents ``I = Y v``. The
:func:`tile_eliminate` kernel computes ``Y`` by block Gaussian elimination in
``O(R C^2 + R^2 C^2 + R C^3)`` operations (row wires first, each a tridiagonal chain, then
the column wires row block by row block), and keeps the factors so the internal node
voltages of any port voltages follow by back substitution (:func:`tile_internal`). This is
nodal analysis with the internal nodes eliminated exactly (a Schur complement), not an
approximation; the solver certifies every solution with the KCL residual of the full
circuit, internal nodes included.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ..circuit.crossbar import CrossbarLayout, crossbar_layout
from ..errors import EpsimError

# Below this wire resistance (in units of 1/g_unit) the elimination loses digits to
# cancellation (wire conductances 1e9 times the devices'); use 0 (no wires) instead.
MIN_WIRE_R_UNITS = 1e-9


def wire_conductance_units(wire_resistance_ohm: float, g_unit_S: float) -> float:
    """Normalised conductance ``1 / (r_wire g_unit)`` of one wire segment; checks the range."""
    r = float(wire_resistance_ohm)
    if not (np.isfinite(r) and r > 0):
        raise EpsimError(f"wire resistance must be a positive number of ohms, got {wire_resistance_ohm!r}")
    if r * g_unit_S < MIN_WIRE_R_UNITS:
        raise EpsimError(f"wire resistance {r:g} ohm is below {MIN_WIRE_R_UNITS / g_unit_S:g} ohm "
                         f"(1e-9/g_unit): too small to eliminate accurately; use 0 for ideal wires")
    return 1.0 / (r * g_unit_S)


# ---- the tile kernels ------------------------------------------------------------------
@nb.njit(cache=True)
def _row_chain_inverse(G_row, g, out):
    """``out = T^-1`` of one row wire's tridiagonal matrix (Thomas on the identity).

    ``T[c, c] = G_row[c] + g + (g if c < C-1)`` (the first segment joins the driver, the
    last node has no right neighbour), ``T[c, c+1] = T[c+1, c] = -g``.
    """
    C = G_row.size
    denom = np.empty(C)
    cp = np.empty(C)
    for c in range(C):
        d = G_row[c] + g + (g if c < C - 1 else 0.0)
        if c > 0:
            d -= g * g / denom[c - 1]
        denom[c] = d
        cp[c] = -g / d
    # forward sweep on the identity: row c of D' depends on rows <= c
    for c in range(C):
        for m in range(C):
            rhs = 1.0 if m == c else 0.0
            if c > 0:
                rhs += g * out[c - 1, m]
            out[c, m] = rhs / denom[c]
    for c in range(C - 2, -1, -1):
        for m in range(C):
            out[c, m] -= cp[c] * out[c + 1, m]


@nb.njit(cache=True)
def tile_eliminate(G, g):
    """Port admittance of one crossbar tile with wire resistance, and its factors.

    Args:
        G: ``(R, C)`` normalised device conductances (``G/g_unit``).
        g: normalised conductance of one wire segment.

    Returns:
        Y: ``(R+C, R+C)`` port admittance (normalised), ports ordered ``[row drivers 0..R-1,
           column ends 0..C-1]``: the currents flowing from the ports into the tile are
           ``Y @ v_ports``.
        F: ``(R, C, C)`` inverses of the column-node blocks met during the elimination.
        s: ``(R, C)`` coupling of each row driver to its row's column nodes after the row
           wire is eliminated; spp: ``(R,)`` the driver's own term.
    """
    R, C = G.shape
    P = R + C
    Y = np.zeros((P, P))
    F = np.empty((R, C, C))
    s = np.empty((R, C))
    spp = np.empty(R)
    Tinv = np.empty((C, C))
    A = np.empty((C, C))
    for r in range(R):
        _row_chain_inverse(G[r], g, Tinv)
        spp[r] = g - g * g * Tinv[0, 0]
        for c in range(C):
            s[r, c] = -g * G[r, c] * Tinv[0, c]
            for c2 in range(C):
                A[c, c2] = -G[r, c] * G[r, c2] * Tinv[c, c2]
            A[c, c] += G[r, c] + g  # the device, and the column segment below
        if r > 0:
            for c in range(C):
                for c2 in range(C):
                    A[c, c2] -= g * g * F[r - 1, c, c2]
                A[c, c] += g  # the column segment above
        F[r] = np.linalg.inv(A)
        for c in range(C):  # symmetrise against round-off
            for c2 in range(c + 1, C):
                m = 0.5 * (F[r, c, c2] + F[r, c2, c])
                F[r, c, c2] = m
                F[r, c2, c] = m
    # H_j = F_j + g^2 F_j H_{j+1} F_j, h_j = H_j s_j
    h = np.empty((R, C))
    H = F[R - 1].copy()
    h[R - 1] = H @ s[R - 1]
    for r in range(R - 2, -1, -1):
        H = F[r] + (g * g) * (F[r] @ H @ F[r])
        h[r] = H @ s[r]
    Bp = np.zeros((R, C))
    Bp[0] = s[0]
    for j in range(R):
        if j > 0:
            Bp[:j] = g * (Bp[:j] @ F[j - 1])
            Bp[j] = s[j]
        col = Bp[:j + 1] @ h[j]
        for i in range(j + 1):
            Y[i, j] = -col[i]
            Y[j, i] = -col[i]
        Y[j, j] += spp[j]
    Ypq = g * (Bp @ F[R - 1])
    for i in range(R):
        for c in range(C):
            Y[i, R + c] = Ypq[i, c]
            Y[R + c, i] = Ypq[i, c]
    for c in range(C):
        for c2 in range(C):
            Y[R + c, R + c2] = -g * g * F[R - 1, c, c2]
        Y[R + c, R + c] += g
    # A floating tile passes no current at a uniform port voltage: every row of Y sums to 0.
    # The off-diagonal entries carry no cancellation, the diagonal ones lose ~g/G of their
    # digits, so the diagonal is rebuilt from the off-diagonals (GTH-style).
    for i in range(P):
        acc = 0.0
        for j in range(P):
            if j != i:
                acc += Y[i, j]
        Y[i, i] = -acc
    return Y, F, s, spp


@nb.njit(parallel=True, cache=True)
def tile_internal(G, g, F, s, v_row, v_col, xr, xc):
    """Internal node voltages of tiles from their port voltages (back substitution).

    Args:
        G, g, F, s: as :func:`tile_eliminate` (one tile's conductances and factors; every
            tile of the call shares them).
        v_row: ``(N, R)`` row-driver voltages; v_col: ``(N, C)`` column-end voltages, one row
            per (sample, tile) instance.
        xr, xc: ``(N, R, C)`` outputs: row-wire and column-wire node voltages.
    """
    N, R = v_row.shape
    C = v_col.shape[1]
    for n in nb.prange(N):
        z = np.empty((R, C))
        z[0] = s[0] * v_row[n, 0]
        for r in range(1, R):
            z[r] = g * (F[r - 1] @ z[r - 1]) + s[r] * v_row[n, r]
        below = v_col[n].copy()
        for r in range(R - 1, -1, -1):
            yr = F[r] @ (g * below - z[r])
            xc[n, r] = yr
            below = yr
        # row wires: T x = g v_row e_0 + G_r * y_r (Thomas)
        denom = np.empty(C)
        dp = np.empty(C)
        for r in range(R):
            for c in range(C):
                d = G[r, c] + g + (g if c < C - 1 else 0.0)
                rhs = G[r, c] * xc[n, r, c] + (g * v_row[n, r] if c == 0 else 0.0)
                if c > 0:
                    d -= g * g / denom[c - 1]
                    rhs += g * dp[c - 1]
                denom[c] = d
                dp[c] = rhs / d
            xr[n, r, C - 1] = dp[C - 1]
            for c in range(C - 2, -1, -1):
                xr[n, r, c] = dp[c] + (g / denom[c]) * xr[n, r, c + 1]


# ---- reduced system of a whole network ------------------------------------------------
@dataclass
class _TiledConnection:
    layout: CrossbarLayout
    G: np.ndarray  # (R, C) normalised conductances of the (identical) tiles
    Y: np.ndarray
    F: np.ndarray
    s: np.ndarray


class WiredNetwork:
    """A network's circuit with wire resistance, reduced exactly onto its neuron nodes.

    Free neuron nodes (layers ``1..L`` in order, flat) are the unknowns; the input nodes
    are fixed by their sources. Every connection's tiles are eliminated
    (:func:`tile_eliminate`), which gives the normalised KCL of the free nodes::

        K v + M v_in - b + beta * (v_out - target) + i_diode(v) = 0

    K: ``(n_free, n_free)`` symmetric; M: ``(n_free, n_0)``; b: bias currents (V, normalised).
    Built once per set of conductances (a batch) and reused for every sample and phase.
    """

    def __init__(self, net, wire_resistance_ohm: float):
        if net.has_amplifiers or net.is_differential or net.has_leak:
            raise EpsimError("wire resistance with amplifiers, differential layers or a leak is not "
                             "supported: set every amplifier gain to 1, no leak, or the wire resistance to 0")
        self.net = net
        self.wire_resistance_ohm = float(wire_resistance_ohm)
        self.g = wire_conductance_units(wire_resistance_ohm, net.ranges.g_unit_S)
        sizes = net.layer_sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes[1:])]).astype(np.int64)
        n_free, n0 = int(self.offsets[-1]), sizes[0]
        self.n_free = n_free
        K = np.zeros((n_free, n_free))
        M = np.zeros((n_free, n0))
        self.tiled = []
        for l, conn in enumerate(net.connections, start=1):
            lay = crossbar_layout(conn)
            G = np.ascontiguousarray(net.w[l - 1].reshape(-1)[lay.param], dtype=np.float64)
            Y, F, s, _ = tile_eliminate(G, self.g)
            self.tiled.append(_TiledConnection(lay, G, Y, F, s))
            R = lay.rows
            col_idx = self.offsets[l - 1] + lay.col_node  # free indices of column ends
            if l == 1:  # rows are input nodes (fixed)
                rows_fixed = lay.row_node
                _scatter(K, col_idx, col_idx, Y[R:, R:])
                _scatter(M, col_idx, rows_fixed, Y[R:, :R])
            else:
                row_idx = self.offsets[l - 2] + lay.row_node
                _scatter(K, row_idx, row_idx, Y[:R, :R])
                _scatter(K, row_idx, col_idx, Y[:R, R:])
                _scatter(K, col_idx, row_idx, Y[R:, :R])
                _scatter(K, col_idx, col_idx, Y[R:, R:])
        self.K = 0.5 * (K + K.T)
        self.M = M
        self.bias = np.concatenate([net.bias_per_node(l) for l in range(1, net.num_layers + 1)])
        self.rail_lo = np.concatenate(net.rail_lo_V)
        self.rail_hi = np.concatenate(net.rail_hi_V)
        self.out_slice = slice(int(self.offsets[-2]), n_free)

    def split(self, v):
        """``(B, n_free)`` -> list of ``(B, n_l)`` per free layer."""
        return [v[:, self.offsets[l]:self.offsets[l + 1]] for l in range(len(self.offsets) - 1)]

    def internal(self, v_input, v_free):
        """Internal wire-node voltages: per connection ``(xr, xc)``, each ``(B, T, R, C)`` (V)."""
        layers = [v_input] + list(v_free)
        out = []
        for l, tc in enumerate(self.tiled, start=1):
            lay = tc.layout
            B = v_input.shape[0]
            v_row = layers[l - 1][:, lay.row_node].reshape(B * lay.n_tiles, lay.rows)
            v_col = layers[l][:, lay.col_node].reshape(B * lay.n_tiles, lay.cols)
            xr = np.empty((B * lay.n_tiles, lay.rows, lay.cols))
            xc = np.empty_like(xr)
            tile_internal(tc.G, self.g, tc.F, tc.s, np.ascontiguousarray(v_row),
                          np.ascontiguousarray(v_col), xr, xc)
            shape = (B, lay.n_tiles, lay.rows, lay.cols)
            out.append((xr.reshape(shape), xc.reshape(shape)))
        return out

    def full_kcl(self, v_input, v_free, internal):
        """KCL of the full circuit from all node voltages, computed element by element.

        Returns ``(leave, worst_internal)``: ``leave`` ``(B, n_free)`` is the normalised
        current leaving each free neuron node through its wires; ``worst_internal`` ``(B,)``
        the largest normalised KCL violation at any internal wire node.
        """
        g = self.g
        layers = [v_input] + list(v_free)
        B = v_input.shape[0]
        leave = [np.zeros((B, n)) for n in self.net.layer_sizes]
        worst = np.zeros(B)
        for l, (tc, (xr, xc)) in enumerate(zip(self.tiled, internal), start=1):
            lay = tc.layout
            vp = layers[l - 1][:, lay.row_node]  # (B, T, R)
            vq = layers[l][:, lay.col_node]  # (B, T, C)
            dev = tc.G * (xr - xc)  # from the row wire through each device to the column wire
            left = np.concatenate([vp[..., None], xr[..., :-1]], axis=3)
            i_right = g * (left - xr)  # through row segment c, rightwards into xr[r, c]
            below = np.concatenate([xc[:, :, 1:], vq[:, :, None, :]], axis=2)
            i_down = g * (xc - below)  # through column segment r, downwards out of xc[r, c]
            zero_r = np.zeros(i_right.shape[:3] + (1,))
            kr = -i_right + np.concatenate([i_right[..., 1:], zero_r], axis=3) + dev
            zero_c = np.zeros(i_down.shape[:2] + (1,) + i_down.shape[3:])
            kc = i_down - np.concatenate([zero_c, i_down[:, :, :-1]], axis=2) - dev
            worst = np.maximum(worst, np.abs(kr).reshape(B, -1).max(axis=1, initial=0.0))
            worst = np.maximum(worst, np.abs(kc).reshape(B, -1).max(axis=1, initial=0.0))
            # current leaving each driver into its rows, and each column end into its column
            n_prev, n_cur = leave[l - 1].shape[1], leave[l].shape[1]
            rows = (np.arange(B)[:, None] * n_prev + lay.row_node.ravel()[None, :]).ravel()
            cols = (np.arange(B)[:, None] * n_cur + lay.col_node.ravel()[None, :]).ravel()
            leave[l - 1] += np.bincount(rows, weights=i_right[..., 0].ravel(),
                                        minlength=B * n_prev).reshape(B, n_prev)
            leave[l] -= np.bincount(cols, weights=i_down[:, :, -1, :].ravel(),
                                    minlength=B * n_cur).reshape(B, n_cur)
        return np.concatenate(leave[1:], axis=1), worst

    def device_drops(self, internal):
        """Voltage across every device, per connection ``(B, T, R, C)`` (V)."""
        return [xr - xc for xr, xc in internal]


def _scatter(dst, rows, cols, block):
    """``dst[rows[t, i], cols[t, j]] += block[i, j]`` for every tile ``t`` (dst 2-D, C order)."""
    T = rows.shape[0]
    flat = (rows[:, :, None] * dst.shape[1] + cols[:, None, :]).ravel()
    dst += np.bincount(flat, weights=np.broadcast_to(block, (T,) + block.shape).ravel(),
                       minlength=dst.size).reshape(dst.shape)
