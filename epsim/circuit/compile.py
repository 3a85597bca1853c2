"""Compile a layered :class:`~epsim.models.resistive.ResistiveNetwork` into the circuit IR.

One input sample and one phase give one circuit (:class:`~epsim.circuit.netlist.Netlist`).

Node names (all lower case; ``PREFIX`` is empty unless several samples share a netlist)::

    0                       ground: the 0 V rail of every clamp diode and source
    in_c{c}_y{y}_x{x}       input layer (2C, H, W): channels c < C carry +gain*x, c >= C -gain*x
    h{l}_c{c}_y{y}_x{x}     hidden layer l (1..L-1) of shape (C, H, W)
    h{l}_u{k}               hidden layer l of shape (n,), unit k
    out_{k}                 output node k (layer L, flattened)
    tgt_{k}                 nudging target source of output k (nudged phases only)
    rail{r}                 a clamp rail at a non-zero voltage (not used by the built-in models)
    a_{node}                amplifier output of hidden node {node}: A_l * v({node})
    x_{node}                crossbar terminal of hidden node {node}: where the conductances of
                            the next connection attach when the node has an amplifier

Elements::

    v{node}                 input source: node to ground at gain*(+x or -x) volts
    r{l}_{e}                conductance e of connection l (layer l-1 -> l), in the order of
                            ``net.connections[l-1].pairs()``; a zero conductance is an open
                            circuit and is left out
    rpad{l}_{e}             conductance e to the 0 V rail of a padded conv connection l: from
                            the output node to ground, one per kernel position in the pad, in
                            the order of ``net.connections[l-1].pad_pairs()`` (left out if 0)
    dlo_{node} / dhi_{node} clamp diode keeping the node above its low rail (anode = rail,
                            cathode = node: excitatory units) / below its high rail (anode =
                            node, cathode = rail: inhibitory units)
    ib_{node}               bias current source injecting I_bias into the node (left out if 0)
    rleak_{node}            leak: the node's fixed conductance to the 0 V rail (left out if 0)
    rnudge_{k}, vtgt_{k}    nudge: a resistor 1/(beta g_unit) from out_k to tgt_k, a source at
                            the target voltage. The -beta phase needs a negative conductance: it
                            is written as a negative resistor, which ngspice and the MNA solver
                            accept in DC analysis (reciprocal, so the circuit keeps its energy).
    bnudge_{k}              the cross-entropy nudge (``net.cost``) instead: a softmax current
                            source (B) driving beta g_unit 1 V (y_k - softmax(v(out) / 1 V)_k)
                            from ground into out_k, y the one-hot target probabilities.
    e_{node}, vs_{node},    bidirectional amplifier of a node of hidden layer l whose gain A_l
    f_{node}                (``net.amp_gains[l-1]``, layer l -> l+1) is not 1: ``e_{node}`` (E)
                            sets a_{node} to A_l * v({node}); ``vs_{node}`` (0 V source from
                            a_{node} to x_{node}) senses the current I the next crossbar takes
                            from the amplifier; ``f_{node}`` (F, gain 1/A_l) draws I / A_l out
                            of {node} to ground. Gain 1: none of these, the crossbar attaches
                            to {node} itself. Not available with wire resistance.
    en_{node}, vsn_{node},  inverting copy of a node of a differentially presented hidden
    fn_{node}, an_{node},   layer l (always present, whatever A_l): ``en_{node}`` sets
    xn_{node}               an_{node} to -A_l * v({node}), ``fn_{node}`` (gain -1/A_l) draws
                            -I / A_l out of {node}; the next connection's second half of input
                            terminals (channels or units C..2C-1) attach to xn_{node}.

With amplifiers, KCL at a node j of layer l+1 reads ``sum_i G_ij (A_l v_i - v_j) + I_bias +
I_diode = 0`` and a node i of layer l carries the extra current
``-(1/A_l) sum_j G_ij (A_l v_i - v_j)``.
"""
from __future__ import annotations

import numpy as np

from .diodes import DiodeModel
from ..errors import EpsimError
from .netlist import GROUND, DiodeCard, Netlist

PHASES = ("free", "plus", "minus")
SHOCKLEY_MODEL = "dclamp"
IDEAL_MODEL = "dideal"


def phase_beta(phase: str, beta: float) -> float:
    """Signed nudging strength of a named phase (``free``: 0, ``plus``: +beta, ``minus``: -beta)."""
    if phase not in PHASES:
        raise EpsimError(f"unknown phase {phase!r}; choose from {', '.join(PHASES)}")
    return {"free": 0.0, "plus": float(beta), "minus": -float(beta)}[phase]


def diode_card(diode: DiodeModel) -> DiodeCard:
    """IR diode model of a network's clamp diodes."""
    if diode.kind == "ideal":
        return DiodeCard(IDEAL_MODEL, diode.is_A, diode.n, ideal=True)
    return DiodeCard(SHOCKLEY_MODEL, float(diode.is_A), float(diode.n))


def with_diode(net, kind: str, **params):
    """Copy of ``net`` (same parameters) whose clamp diodes are ``kind`` (ideal|shockley);
    ``params`` replace diode parameters (``is_A`` in A, ``n``, ``temp_K`` in K,
    ``rail_offset_V`` in V; going to ideal diodes drops the rail offset)."""
    from ..models.resistive import ResistiveNetwork

    d = net.describe()
    d["diode"] = dict(d["diode"], kind=kind, **params)
    if kind == "ideal":
        d["diode"]["rail_offset_V"] = 0.0   # ideal diodes clamp at the rails, at 0 V
    out = ResistiveNetwork.from_description(d)
    out.w = [w.copy() for w in net.w]
    out.b = [b.copy() for b in net.b]
    return out


def with_diode_options(net, kind=None, rail_offset_V=None):
    """``net`` with the clamp diodes a command's ``--diode`` / ``--rail-offset`` ask for
    (``None``: the model's). Raises EpsimError for an offset on ideal diodes."""
    if kind is not None and kind != net.diode.kind:
        net = with_diode(net, kind)
    if rail_offset_V is not None:
        if net.diode.kind != "shockley":
            raise EpsimError("--rail-offset offsets Shockley clamp rails: add --diode shockley")
        net = with_diode(net, "shockley", rail_offset_V=rail_offset_V)
    return net


def with_layer_scales(net, factors):
    """Copy of ``net`` whose hidden layers ``1..L-1`` run at ``factors[l-1]`` times their
    voltages, computing the same function with ideal diodes.

    The input gain is multiplied by ``k_1``, the amplifier between layers ``l`` and ``l+1`` by
    ``k_{l+1} / k_l`` (``k_L = 1``: the outputs keep their voltages) and the biases of layer
    ``l`` by ``k_l``; conductances are unchanged. In the normalised circuit of the amplified
    network (voltages ``v_l / P_l``) every source, bias and target is then multiplied by ``k_1``,
    so with diodes clamped at 0 V (positive homogeneity) every hidden voltage becomes
    ``k_l v_l`` and every output voltage stays. With Shockley diodes the knee does not scale:
    larger factors put the signals further above it. This is how a designer picks the
    operating voltages of a trained circuit.

    Args:
        net: a :class:`~epsim.models.resistive.ResistiveNetwork`.
        factors: ``L - 1`` positive numbers (dimensionless), one per hidden layer.
    """
    from ..models.resistive import ResistiveNetwork

    k = np.asarray(factors, dtype=np.float64).reshape(-1)
    if k.size != net.num_layers - 1 or not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise EpsimError(f"need {net.num_layers - 1} positive finite layer factors (one per hidden layer), "
                         f"got {list(np.atleast_1d(factors))}")
    k_all = np.concatenate([k, [1.0]])
    d = net.describe()
    d["input_gain_V"] = net.input_gain_V * float(k_all[0])
    d["amp_gains"] = [float(a * k_all[l + 1] / k_all[l]) for l, a in enumerate(net.amp_gains)]
    out = ResistiveNetwork.from_description(d)
    out.w = [w.copy() for w in net.w]
    out.b = [b * float(k_all[l]) for l, b in enumerate(net.b)]
    return out


def _grid_names(stem: str, shape) -> list:
    if len(shape) == 3:
        c, h, w = shape
        return [f"{stem}_c{i}_y{y}_x{x}" for i in range(c) for y in range(h) for x in range(w)]
    return [f"{stem}_u{k}" for k in range(int(np.prod(shape)))]


def layer_node_names(net, prefix: str = "") -> list:
    """Node names of layers ``0..L`` (lists of str, flat node order of each layer)."""
    L = net.num_layers
    names = [[prefix + n for n in _grid_names("in", net.layer_shapes[0])]]
    for l in range(1, L):
        names.append([prefix + n for n in _grid_names(f"h{l}", net.layer_shapes[l])])
    names.append([f"{prefix}out_{k}" for k in range(net.layer_sizes[L])])
    return names


def describe_mapping(net) -> list:
    """Header lines: how node names map to layers, channels and positions."""
    lines = ["node names (ground 0 = the 0 V rail):"]
    for l, shape in enumerate(net.layer_shapes):
        what = "input" if l == 0 else ("output" if l == net.num_layers else "hidden")
        if l == 0:
            pattern = "in_c{c}_y{y}_x{x} (c < C: +gain*x, c >= C: -gain*x)"
        elif l == net.num_layers:
            pattern = "out_{k} (flattened)"
        elif len(shape) == 3:
            pattern = f"h{l}_c{{c}}_y{{y}}_x{{x}}"
        else:
            pattern = f"h{l}_u{{k}}"
        extra = ""
        if 0 < l < net.num_layers:
            n_exc = int(np.sum(np.isfinite(net.rail_lo_V[l - 1])))
            extra = f"; {n_exc} excitatory (v >= rail), {net.layer_sizes[l] - n_exc} inhibitory (v <= rail)"
        lines.append(f"  layer {l} {what} {tuple(shape)}: {pattern}{extra}")
    lines.append("  tgt_{k}: nudging target of out_{k}; r{l}_{e}: e-th conductance of "
                 "connection l (layer l-1 -> l) in Connection.pairs() order")
    for l, conn in enumerate(net.connections, start=1):
        if getattr(conn, "padding", 0):
            lines.append(f"  connection {l} is a conv padded by {conn.padding}: rpad{l}_{{e}} joins an output "
                         "node to ground (0 V pad) through the tied conductance, Connection.pad_pairs() order")
    for l in range(1, net.num_layers):
        gain = net.crossbar_input_gain(l)
        if gain != 1.0:
            lines.append(f"  amplifier layer {l} -> {l + 1}, gain {gain!r}: per node N, e_N (E) sets "
                         f"a_N = {gain!r} * v(N); vs_N (0 V, a_N -> x_N) senses the current into "
                         f"connection {l + 1}, which attaches to x_N; f_N (F, gain {1.0 / gain!r}) "
                         "draws that current / gain out of N to ground")
    return lines


def compile_network(net, v_input, *, beta: float = 0.0, target_V=None, netlist: Netlist | None = None,
                    prefix: str = "", notes: bool = True, wire_resistance_ohm: float = 0.0) -> Netlist:
    """Circuit of ``net`` for one input sample and one phase.

    Args:
        net: the layered network (its diode model decides the clamp diode card).
        v_input: ``(n_0,)`` input source voltages (V), a row of ``net.input_voltages(x)``.
        beta: signed nudging strength (0: free phase).
        target_V: ``(K,)`` target output voltages (V), needed when ``beta != 0`` (with the
            cross-entropy nudge the target probabilities).
        netlist: append to this circuit instead of a new one (several samples in one file).
        prefix: prepended to every node and element name of this sample.
        notes: add header notes (model, shapes, phase, node mapping) to the circuit.
        wire_resistance_ohm: resistance of one crossbar wire segment (ohms); > 0 lays every
            connection out as crossbars with resistive row and column wires and internal
            nodes (:mod:`epsim.circuit.crossbar`), 0 joins each conductance to its neuron nodes.
    """
    v_input = np.asarray(v_input, dtype=np.float64).reshape(-1)
    if v_input.size != net.layer_sizes[0]:
        raise EpsimError(f"input has {v_input.size} source voltages, the network {net.layer_sizes[0]}")
    if beta != 0.0:
        if target_V is None:
            raise EpsimError("a nudged phase needs target voltages")
        target_V = np.asarray(target_V, dtype=np.float64).reshape(-1)
        if target_V.size != net.num_outputs:
            raise EpsimError(f"target has {target_V.size} voltages, the network {net.num_outputs} outputs")
    if wire_resistance_ohm and (net.has_amplifiers or net.is_differential or net.has_leak):
        raise EpsimError("wire resistance with amplifiers, differential layers or a leak is not "
                         "supported: set every amplifier gain to 1, no leak, or the wire resistance to 0")
    card = diode_card(net.diode)
    nl = netlist if netlist is not None else Netlist(title=f"epsim {net.name}", temp_K=net.diode.temp_K)
    if nl.temp_K != net.diode.temp_K:
        raise EpsimError("cannot add a network at another diode temperature to this circuit")
    nl.add_model(card)
    g_unit = net.ranges.g_unit_S
    names = layer_node_names(net, prefix)
    nl.add("V", ["v" + n for n in names[0]], names[0], [GROUND] * len(names[0]), v_input)
    for l, conn in enumerate(net.connections, start=1):
        t, i, j = conn.pairs()
        g_S = net.w[l - 1].reshape(-1)[t] * g_unit
        keep = np.nonzero(g_S)[0]
        if np.any(g_S < 0):
            raise EpsimError(f"connection {l} holds negative conductances")
        node_in = np.array(nl.node_ids(_crossbar_inputs(nl, net, l - 1, names[l - 1])))
        node_out = np.array(nl.node_ids(names[l]))
        if wire_resistance_ohm:
            from .crossbar import add_wired_connection

            add_wired_connection(nl, l, conn, net.w[l - 1], g_unit, wire_resistance_ohm,
                                 node_in, node_out, prefix)
        else:
            nl.add("R", [f"r{prefix}{l}_{e}" for e in keep], node_in[i[keep]], node_out[j[keep]],
                   1.0 / g_S[keep])
            _add_pad_conductances(nl, net, l, node_out, prefix)
        _add_clamps(nl, net, l, names[l], card.name)
        if net.has_leak:
            leak_S = net.leak_per_node(l) * g_unit
            nz = np.nonzero(leak_S)[0]
            nl.add("R", [f"rleak_{names[l][k]}" for k in nz], [names[l][k] for k in nz],
                   [GROUND] * nz.size, 1.0 / leak_S[nz])
        bias_A = net.bias_per_node(l) * g_unit
        nz = np.nonzero(bias_A)[0]
        nl.add("I", [f"ib_{names[l][k]}" for k in nz], [GROUND] * nz.size,
               [names[l][k] for k in nz], bias_A[nz])
    if beta != 0.0 and net.cost == "cross-entropy":
        out = names[-1]
        nl.add("B", [f"bnudge_{prefix}{k}" for k in range(len(out))], [GROUND] * len(out), out,
               np.full(len(out), beta * g_unit * 1.0), target=target_V, group=["nudge"] * len(out))
    elif beta != 0.0:
        out = names[-1]
        tgt = [f"{prefix}tgt_{k}" for k in range(len(out))]
        nl.add("V", [f"v{t}" for t in tgt], tgt, [GROUND] * len(tgt), target_V)
        nl.add("R", [f"rnudge_{prefix}{k}" for k in range(len(out))], out, tgt,
               np.full(len(out), 1.0 / (beta * g_unit)))
    if notes:
        nl.notes.extend(_notes(net, beta))
        if wire_resistance_ohm:
            nl.notes.append(f"wire resistance {float(wire_resistance_ohm)!r} ohm per crossbar segment: "
                            "xr{l}_t{t}_r{r}_c{c} / xc{l}_t{t}_r{r}_c{c} are the row / column wire "
                            "nodes of device (r, c) of tile t (epsim.circuit.crossbar)")
    return nl


def _crossbar_inputs(nl, net, k, names) -> list:
    """Node names connection ``k+1`` attaches to on its input side, in the order of its
    input terminals: layer ``k``'s nodes, or their crossbar terminals ``x_{node}`` after
    adding the amplifiers of layer ``k`` (gain ``net.crossbar_input_gain(k)`` != 1); for a
    differentially presented layer, followed by the inverting copies ``xn_{node}``."""
    gain = net.crossbar_input_gain(k)
    term = names if gain == 1.0 else _add_amplifiers(nl, names, gain, "")
    if k > 0 and net.differential[k - 1]:
        term = list(term) + _add_amplifiers(nl, names, -gain, "n")
    return term


def _add_amplifiers(nl, names, gain, tag) -> list:
    """Bidirectional amplifiers of gain ``gain`` (negative: inverting) on nodes ``names``;
    returns their crossbar terminals ``x{tag}_{node}``. ``e{tag}_N`` sets ``a{tag}_N`` to
    ``gain * v(N)``, ``vs{tag}_N`` (0 V) senses the current I the crossbar takes, ``f{tag}_N``
    draws ``I / gain`` out of N."""
    amp = [f"a{tag}_{n}" for n in names]
    term = [f"x{tag}_{n}" for n in names]
    sense = [f"vs{tag}_{n}" for n in names]
    nl.add("E", [f"e{tag}_{n}" for n in names], amp, [GROUND] * len(names), gain,
           c=names, d=[GROUND] * len(names))
    nl.add("V", sense, amp, term, 0.0)
    nl.add("F", [f"f{tag}_{n}" for n in names], names, [GROUND] * len(names), 1.0 / gain, control=sense)
    return term


def _add_pad_conductances(nl, net, l, node_out, prefix):
    """Resistors ``rpad{l}_{e}`` of a padded conv connection ``l``: each kernel position in
    the pad joins its output node (``node_out``: layer ``l``'s node ids in ``nl``) to ground
    through the tied conductance."""
    t, j = net.connections[l - 1].pad_pairs()
    if not t.size:
        return
    g_S = net.w[l - 1].reshape(-1)[t] * net.ranges.g_unit_S
    keep = np.nonzero(g_S)[0]
    nl.add("R", [f"rpad{prefix}{l}_{e}" for e in keep], node_out[j[keep]], [GROUND] * keep.size,
           1.0 / g_S[keep])


def _add_clamps(nl, net, l, names, model):
    if l == net.num_layers:
        return
    for side, rails in (("lo", net.rail_lo_V[l - 1]), ("hi", net.rail_hi_V[l - 1])):
        has = np.nonzero(np.isfinite(rails))[0]
        if not has.size:
            continue
        rail_nodes = [_rail_node(nl, float(r)) for r in rails[has]]
        nodes = [names[k] for k in has]
        anode, cathode = (rail_nodes, nodes) if side == "lo" else (nodes, rail_nodes)
        nl.add("D", [f"d{side}_{n}" for n in nodes], anode, cathode, None, model=model)


def _rail_node(nl, rail_V: float) -> str:
    if rail_V == 0.0:
        return GROUND
    name = f"rail{rail_V!r}".replace("-", "m").replace(".", "p").replace("+", "")
    if not nl.has_node(name):
        nl.add("V", ["v" + name], [name], [GROUND], [rail_V])
    return name


def _notes(net, beta) -> list:
    d = net.diode
    diode = ("ideal (box constraint; SPICE gets the near-ideal library model)" if d.kind == "ideal"
             else f"Shockley Is={d.is_A!r} A, n={d.n!r}, T={d.temp_K!r} K")
    phase = "free" if beta == 0.0 else ("plus (+beta)" if beta > 0 else "minus (-beta)")
    lines = [
        f"model: {net.name}, layers {' -> '.join(str(tuple(s)) for s in net.layer_shapes)}",
        "connections: " + ", ".join(c.kind for c in net.connections)
        + f"; g_unit {net.ranges.g_unit_S!r} S; input gain {net.input_gain_V!r} V"
        + (f" around pixel value {net.input_center!r}" if net.input_center else ""),
        f"clamp diodes: {diode}",
        f"phase: {phase}, signed beta = {beta!r} "
        + ("(nudge: softmax current sources bnudge_k, beta*g_unit*1V*(y_k - softmax_k(v(out)/1V)))"
           if net.cost == "cross-entropy" else "(nudge conductance beta*g_unit to tgt_k)"),
    ]
    if net.has_leak:
        lines.append("leak: rleak_N joins node N to ground (a fixed conductance, not trained)")
    if net.has_amplifiers:
        lines.append("bidirectional amplifiers, gains A_l (layer l -> l+1): "
                     + ", ".join(repr(float(a)) for a in net.amp_gains))
    if net.is_differential:
        lines.append("differential layers (each node also presented as -A_l v through an inverting "
                     "amplifier en_N / vsn_N / fn_N, terminal xn_N): "
                     + ", ".join(str(l) for l in range(1, net.num_layers) if net.differential[l - 1]))
    return lines + describe_mapping(net)
