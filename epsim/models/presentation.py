"""How a free layer's nodes are presented to the crossbar above it.

Plain presentation: the crossbar into layer ``l + 1`` sees ``A_l * v`` of every layer-l node
(``A_l`` the amplifier gain, 1 without amplifiers).

Differential presentation (an inverting and a non-inverting amplifier per node, as the
input layer's ``+x`` / ``-x`` sources): the crossbar sees ``+A_l * v`` and ``-A_l * v``, so
its input side has twice the nodes (channels first: a ``(C, H, W)`` layer is presented as
``(2C, H, W)``, a dense layer of ``n`` as ``2n``; the first half carries ``+v``). Backward,
each amplifier returns ``1/A_l`` of the current its crossbar side draws, the inverting one
with the sign flipped. With conductances ``g+`` on the ``+v`` copy and ``g-`` on the
``-v`` copy of a node ``i`` and a node ``j`` of the next layer, KCL reads

- at ``j``: ``sum_i g+_ij (A v_i - v_j) + g-_ij (-A v_i - v_j)``: a drive
  ``sum_i (g+ - g-)_ij A v_i`` and a self-conductance ``sum_i (g+ + g-)_ij``;
- at ``i`` (returned through the amplifiers, / A): ``sum_j (g+ - g-)_ij v_j / A`` and a
  self-conductance ``sum_j (g+ + g-)_ij``.

So in the solvers a differential crossbar is the plain crossbar over the layer's own nodes
with *signed* drive weights ``g+ - g-`` and self-conductances from ``g+ + g-``
(:func:`crossbar_views`): every solver kernel runs unchanged. The energy and the learning
rule see the presented voltages ``[+A v, -A v]`` (:func:`present`), whose squared drops
across ``g+`` and ``g-`` are measurable in place like any other; EP stays exact (the
co-content of the presented network is the energy whose stationary point the circuit
reaches, with the same layer weights ``1 / P_l^2`` as plain amplifiers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EpsimError
from .connections import Conv2d, Dense, init_conductances


def validate_differential(flags, num_layers: int) -> np.ndarray:
    """Per boundary between free layers, whether it is presented differentially: a
    (L-1,) bool array from one bool (every boundary) or one per boundary."""
    n = max(num_layers - 1, 0)
    f = np.atleast_1d(np.asarray(flags, dtype=bool)).reshape(-1)
    if f.size == 1 and n != 1:
        f = np.full(n, bool(f[0]))
    if f.size != n:
        raise EpsimError(f"{f.size} differential flags for {n} boundaries between free layers")
    return f


def presented_shape(node_shape: tuple, differential: bool) -> tuple:
    """Shape of the crossbar input a layer of ``node_shape`` presents: doubled along its
    first axis (channels, or units) when ``differential``."""
    if not differential:
        return tuple(node_shape)
    return (2 * int(node_shape[0]),) + tuple(node_shape[1:])


def present(v: np.ndarray, differential: bool) -> np.ndarray:
    """(B, n) layer voltages -> (B, 2n) ``[+v, -v]`` when ``differential``, else ``v``."""
    if not differential:
        return v
    return np.concatenate([v, -v], axis=1)


@dataclass
class CrossbarView:
    """One crossbar as the solvers see it: over the nodes of the two layers it joins.

    conn: connection object over the layers' own node shapes; w_drive: signed drive
    weights (``conn.param_shape``, normalised; the stored conductances unless
    differential); degree_out (n_out,) / degree_in (n_in,): total normalised conductance
    the crossbar puts on each node above / below it (``degree_in`` is None for the input
    crossbar, whose input side is the sources).
    """

    conn: object
    w_drive: np.ndarray
    degree_out: np.ndarray
    degree_in: np.ndarray | None


def node_connection(conn, node_shape: tuple):
    """``conn`` rebuilt over an input of ``node_shape`` (its own input when they agree)."""
    if tuple(conn.in_shape) == tuple(node_shape):
        return conn
    if conn.kind == "dense":
        return Dense(node_shape, conn.out_shape)
    return Conv2d(node_shape, conn.out_shape[0], conn.kernel, conn.stride, conn.padding)


def halves(conn, w: np.ndarray, node_shape: tuple) -> tuple:
    """``(g+, g-)``: views of a differential crossbar's conductances ``w`` on the ``+v`` and
    ``-v`` copies of an input layer of ``node_shape`` (dense rows, conv input channels)."""
    if conn.kind == "dense":
        n = int(np.prod(node_shape))
        return w[:n], w[n:]
    return w[:, :node_shape[0]], w[:, node_shape[0]:]


def signed_weights(conn, w: np.ndarray, node_shape: tuple) -> tuple:
    """``(g+ - g-, g+ + g-)`` of a differential crossbar's conductances ``w`` (:func:`halves`)."""
    pos, neg = halves(conn, w, node_shape)
    return np.ascontiguousarray(pos - neg), np.ascontiguousarray(pos + neg)


def initial_conductances(net, l: int, rng: np.random.Generator, gain: float, kind: str) -> np.ndarray:
    """Initial normalised conductances of connection ``l`` (layer l -> l+1): drawn as
    :func:`~epsim.models.connections.init_conductances`; a differential crossbar starts as
    its plain counterpart, the ``+v`` half drawn over the layer's own nodes (their fan-in)
    and the ``-v`` half at 0, so the circuit is the plain one until learning grows it."""
    conn = net.connections[l]
    if l == 0 or not net.differential[l - 1]:
        return init_conductances(conn, rng, gain, kind)
    node_shape = tuple(net.layer_shapes[l])
    pos = init_conductances(node_connection(conn, node_shape), rng, gain, kind)
    return np.concatenate([pos, np.zeros_like(pos)], axis=0 if conn.kind == "dense" else 1)


def crossbar_views(net) -> list:
    """:class:`CrossbarView` of every connection of ``net`` (layer l-1 -> l, l = 1..L)."""
    views = []
    for l, (conn, w) in enumerate(zip(net.connections, net.w)):
        w = np.ascontiguousarray(w, dtype=np.float64)
        if l == 0:
            views.append(CrossbarView(conn, w, conn.degree_out(w), None))
            continue
        if not net.differential[l - 1]:
            views.append(CrossbarView(conn, w, conn.degree_out(w), conn.degree_in(w)))
            continue
        node_shape = tuple(net.layer_shapes[l])
        nodes = node_connection(conn, node_shape)
        w_drive, w_sum = signed_weights(conn, w, node_shape)
        views.append(CrossbarView(nodes, w_drive, nodes.degree_out(w_sum), nodes.degree_in(w_sum)))
    return views
