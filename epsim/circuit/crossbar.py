"""Crossbar layout of a connection with wire (line) resistance, and its netlist elements.

Without wire resistance a conductance joins its two neuron nodes directly. With wire
resistance every crossbar row and column is a chain of resistors of ``r_wire`` ohms per
segment, and each conductance sits between an internal node of its row wire and one of
its column wire.

Crossbar tiles
--------------
A connection (layer ``l-1`` -> layer ``l``) is laid out on one or more *tiles* of ``R`` rows
by ``C`` columns (:func:`crossbar_layout`):

- ``Dense`` (n_in, n_out): one tile, row ``r`` = input node ``r``, column ``c`` = output node
  ``c``, device ``(r, c)`` = ``g[r, c]``.
- ``Conv2d`` (tied): the unrolled (im2col) mapping, one tile per output position ``(y, x)``:
  row ``r = (ci*k + dy)*k + dx`` is driven by input node ``(ci, y*s + dy, x*s + dx)``, column
  ``c = co`` ends at output node ``(co, y, x)``, device ``(r, c)`` = ``g[co, ci, dy, dx]``.
  Every tile holds the same (tied) conductances. Padded conv layers (conductances to the
  0 V rail at the border) have no wired layout: refused.

Which node each conductance attaches to
---------------------------------------
In tile ``t``, with ``R`` rows and ``C`` columns (inputs enter on the left, outputs leave at
the bottom, the usual crossbar picture)::

    driver of row r --r_wire-- xr[r,0] --r_wire-- xr[r,1] -- ... -- xr[r,C-1]   (right end open)
                                  |                  |
                              G[r,0]              G[r,1]          (device between xr[r,c] and xc[r,c])
                                  |                  |
    xc[0,c] --r_wire-- xc[1,c] --r_wire-- ... -- xc[R-1,c] --r_wire-- end node of column c
    (top end open)

- row wire ``r``: internal nodes ``xr[r, c]``, ``c = 0..C-1``; segment 0 joins the row's
  driver (a node of layer ``l-1``) to ``xr[r, 0]``; segment ``c`` joins ``xr[r, c-1]`` to
  ``xr[r, c]``. Device ``(r, c)`` is ``c + 1`` segments from its driver.
- column wire ``c``: internal nodes ``xc[r, c]``, ``r = 0..R-1``; segment ``r`` joins ``xc[r, c]``
  to ``xc[r+1, c]`` and the last one joins ``xc[R-1, c]`` to the column's end node (a node
  of layer ``l``). Device ``(r, c)`` is ``R - r`` segments from its end node.
- every segment has the same resistance ``r_wire`` (ohms); a zero conductance is an open
  device, its wire nodes stay.

So a tile adds ``2 R C`` internal nodes and ``2 R C`` wire resistors. Netlist names (see
:func:`add_wired_connection`): nodes ``xr{l}_t{t}_r{r}_c{c}`` / ``xc{l}_t{t}_r{r}_c{c}``,
wire resistors ``rwr...`` (the row segment ending at ``xr[r, c]``) and ``rwc...`` (the column
segment starting at ``xc[r, c]``), devices ``r{l}_{e}`` as without wires (``e`` in
``Connection.pairs()`` order).

The exact elimination of the internal wire nodes (the ``wires`` solver's reduced system) is
:mod:`epsim.solvers.wire_network`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EpsimError


@dataclass
class CrossbarLayout:
    """Placement of one connection's conductances on identical crossbar tiles.

    rows, cols: tile size ``R`` x ``C``; n_tiles: number of tiles.
    param: ``(R, C)`` int64, flat index into ``w[l]`` of the device at ``(r, c)`` (same in
        every tile: tied conv tiles share their conductances).
    row_node: ``(n_tiles, R)`` int64, flat index in layer ``l-1`` of each row's driver.
    col_node: ``(n_tiles, C)`` int64, flat index in layer ``l`` of each column's end node.
    pair: ``(n_tiles, R, C)`` int64, index ``e`` of the device in ``Connection.pairs()`` order.
    """

    rows: int
    cols: int
    n_tiles: int
    param: np.ndarray
    row_node: np.ndarray
    col_node: np.ndarray
    pair: np.ndarray


def crossbar_layout(conn) -> CrossbarLayout:
    """The tiles of a ``Dense`` or ``Conv2d`` connection (see the module docstring)."""
    if conn.kind == "dense":
        R, C = conn.n_in, conn.n_out
        idx = np.arange(R * C, dtype=np.int64).reshape(R, C)
        return CrossbarLayout(R, C, 1, idx, np.arange(R, dtype=np.int64)[None],
                              np.arange(C, dtype=np.int64)[None], idx[None].copy())
    if conn.kind == "conv":
        if conn.padding:
            raise EpsimError(f"wire resistance is not available for padded conv layers (padding "
                             f"{conn.padding}): use padding 0 or wire resistance 0")
        co_n, ci_n, k, _ = conn.param_shape
        _, h, w = conn.in_shape
        _, h_out, w_out = conn.out_shape
        s = conn.stride
        ci, dy, dx = (a.ravel() for a in np.meshgrid(np.arange(ci_n), np.arange(k), np.arange(k),
                                                      indexing="ij"))
        R, C, T = ci_n * k * k, co_n, h_out * w_out
        co = np.arange(C)
        param = ((co[None, :] * ci_n + ci[:, None]) * k + dy[:, None]) * k + dx[:, None]
        y, x = (a.ravel() for a in np.meshgrid(np.arange(h_out), np.arange(w_out), indexing="ij"))
        row_node = (ci[None, :] * h + y[:, None] * s + dy[None, :]) * w + x[:, None] * s + dx[None, :]
        col_node = (co[None, :] * h_out + y[:, None]) * w_out + x[:, None]
        tiles = np.arange(T)
        pair = (co[None, None, :] * T + tiles[:, None, None]) * R + np.arange(R)[None, :, None]
        return CrossbarLayout(R, C, T, param.astype(np.int64), row_node.astype(np.int64),
                              col_node.astype(np.int64), pair.astype(np.int64))
    raise EpsimError(f"wire resistance is not defined for {conn.kind!r} connections")



def add_wired_connection(nl, l: int, conn, w, g_unit_S: float, wire_resistance_ohm: float,
                         in_nodes, out_nodes, prefix: str = ""):
    """Add connection ``l`` (layer l-1 -> l) with wire resistance to netlist ``nl``.

    Args:
        w: the connection's normalised conductances (``param_shape``).
        in_nodes / out_nodes: node indices of layers ``l-1`` / ``l`` in ``nl`` (flat order).
        prefix: name prefix of this sample (several samples in one netlist).
    """
    lay = crossbar_layout(conn)
    R, C, T = lay.rows, lay.cols, lay.n_tiles
    t, r, c = (a.ravel() for a in np.meshgrid(np.arange(T), np.arange(R), np.arange(C), indexing="ij"))
    tag = [f"{l}_t{a}_r{b}_c{d}" for a, b, d in zip(t.tolist(), r.tolist(), c.tolist())]
    xr = nl.node_ids([f"{prefix}xr{s}" for s in tag]).reshape(T, R, C)
    xc = nl.node_ids([f"{prefix}xc{s}" for s in tag]).reshape(T, R, C)
    in_nodes, out_nodes = np.asarray(in_nodes), np.asarray(out_nodes)
    r_w = float(wire_resistance_ohm)
    # row segments: driver -> xr[.,0], xr[.,c-1] -> xr[.,c]
    left = np.concatenate([in_nodes[lay.row_node][:, :, None], xr[:, :, :-1]], axis=2)
    nl.add("R", [f"rwr{prefix}{s}" for s in tag], left.ravel(), xr.ravel(), r_w)
    # column segments: xc[r,c] -> xc[r+1,c], xc[R-1,c] -> end node
    down = np.concatenate([xc[:, 1:, :], out_nodes[lay.col_node][:, None, :]], axis=1)
    nl.add("R", [f"rwc{prefix}{s}" for s in tag], xc.ravel(), down.ravel(), r_w)
    g_S = w.reshape(-1)[lay.param] * g_unit_S
    if np.any(g_S < 0):
        raise EpsimError(f"connection {l} holds negative conductances")
    g_all = np.broadcast_to(g_S, (T, R, C))
    e = lay.pair
    keep = g_all > 0
    nl.add("R", [f"r{prefix}{l}_{k}" for k in e[keep].tolist()], xr[keep], xc[keep], 1.0 / g_all[keep])


def named_internal_voltages(internal, k: int, prefix: str = "") -> dict:
    """``{node name: volts}`` of sample ``k``'s internal wire nodes (netlist names).

    ``internal``: :meth:`epsim.solvers.wire_network.WiredNetwork.internal` output (per connection ``(xr, xc)``).
    """
    out = {}
    for l, (xr, xc) in enumerate(internal, start=1):
        T, R, C = xr.shape[1:]
        t, r, c = (a.ravel().tolist() for a in np.meshgrid(np.arange(T), np.arange(R), np.arange(C),
                                                            indexing="ij"))
        for stem, arr in (("xr", xr), ("xc", xc)):
            out.update((f"{prefix}{stem}{l}_t{a}_r{b}_c{d}", v) for a, b, d, v in
                       zip(t, r, c, arr[k].ravel().tolist()))
    return out
