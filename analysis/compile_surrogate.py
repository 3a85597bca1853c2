"""Compile a trained feed-forward surrogate into a circuit and measure it as one.

    python analysis/compile_surrogate.py --surrogate DIR --data-dir DATA --out OUT [--loading 0.01]

Reads ``DIR/surrogate.pt`` (written by ``analysis/circuit_surrogate.py``), maps its weights onto
the conductances and bias currents of a differential circuit of the same ``--arch``, solves that
circuit's free phase (numba, every layer's currents in both directions) on the test images and
writes ``OUT/checkpoint.pt`` (a circuit checkpoint that ``epsim.robustness``, ``epsim.export`` and
``epsim.train --init-from`` read; its ``--tol`` and ``--max-iter`` are recorded as the circuit's
solver settings, which those commands default to) and ``OUT/metrics.json`` (accuracies, the loading per boundary,
input gain, amplifier gains and the largest node voltage per layer on 500 test images).

The map. A surrogate with weighted-sum nodes (``--node sum``: an ordinary network) computes
``pre_i = sum_j W_ij u_j + b_i`` with ``u`` a layer presented as ``(v, -v)``; its signed weight on
``v_j`` is ``w_ij = W_ij - W_(i, j+n)``. The circuit puts ``max(w, 0)`` on the ``+v`` input and
``max(-w, 0)`` on the ``-v`` input, so its crossbar current is the same ``sum_j w_ij v_j`` and its
node settles at ``pre_i / G_i`` with ``G_i = sum_j |w_ij|``: a positive per-unit factor, which the
half-excitatory, half-inhibitory clamps commute with. The next crossbar takes it back by scaling
the conductances from unit ``j`` by ``G_j``; at the outputs, conductance added in equal parts to
the ``+v`` and ``-v`` inputs (it carries no net current) brings every output node to the largest
``G``, so the outputs are the surrogate's divided by one common factor and every prediction is
kept. A surrogate with average nodes and conductances (the circuit's own class) is mapped as it
is. So the map is exact for the feed-forward pass (checked on the test images, ``max_rel_error``).

What the map leaves out is the circuit's currents from each layer into the one below. The node
equation of layer ``l`` divides by its own crossbar conductance plus that of the crossbar above;
the feed-forward pass does not change if a layer's conductances and biases are all scaled by one
factor, so ``--loading R`` scales every crossbar above the first until the conductance it puts on
each node below is at most ``R`` times that node's own. As ``R`` falls the circuit approaches its
feed-forward pass, at the price of conductances that shrink by about ``R`` per layer.
``--loading equal`` instead gives every crossbar the same largest conductance (half of
``g_max``; the first crossbar's is set so in either case). The input gain is set so that the outputs' RMS over
512 training images is ``--output-rms`` volts (every bias scales with it: the feed-forward pass is
homogeneous in the inputs and biases); ``--output-rms fit`` instead scales them and shifts every
output by one voltage (its bias) so the outputs fit one-hot targets of 1 V there best, in least
squares: the start for EP training on the circuit's squared error; ``--output-rms logits`` makes
every output, in volts, the surrogate's logit (the common factor of the map taken back on 512
training images): the start for EP training with the cross-entropy nudge, whose softmax reads the
outputs in volts, on the surrogate's own cross-entropy. A passive circuit needs a large input gain for that;
``--hidden-rms V`` then brings every hidden layer to ``V`` volts RMS with amplifiers between the
layers (:func:`epsim.circuit.compile.with_layer_scales`, as ``analysis/diode_gap.py``), which
with ideal diodes is the same circuit function.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from epsim.cli import ArgumentParser, set_command_environment
from epsim.errors import EpsimError

set_command_environment()


def signed_weights(layer, g):
    """Signed weight of every own unit of the presented layer ``(v, -v)``: dense ``(n, out)`` or
    conv ``(C_out, C, K, K)``."""
    if layer[0] == "conv":
        c = g.shape[1] // 2
        return g[:, :c] - g[:, c:]
    n = g.shape[0] // 2
    return g[:n] - g[n:]


def scale_inputs(layer, w, unit_scale, in_shape):
    """``w`` with the weights from own input unit/channel ``j`` multiplied by ``unit_scale[j]``.

    in_shape: (C, H, W) of the own units below (a conv layer's output channels), or (n,)."""
    if layer[0] == "conv":
        return w * unit_scale[None, :, None, None]
    if len(in_shape) == 3:  # dense after conv: flattened (c, h, w)
        unit_scale = np.repeat(unit_scale, in_shape[1] * in_shape[2])
    return w * unit_scale[:, None]


def node_total(layer, w):
    """Sum of |w| into every output unit/channel."""
    return np.abs(w).sum(axis=(1, 2, 3)) if layer[0] == "conv" else np.abs(w).sum(axis=0)


def split(layer, w):
    """Conductances on the presented ``(v, -v)``: ``max(w, 0)`` on ``+v``, ``max(-w, 0)`` on ``-v``."""
    axis = 1 if layer[0] == "conv" else 0
    return np.concatenate([np.maximum(w, 0.0), np.maximum(-w, 0.0)], axis=axis)


def average_node_parameters(layers, image_shape, g, b):
    """Weighted-sum surrogate -> conductances and biases of average nodes computing the same
    predictions (module docstring). Returns ``(g, b)``: the average network's outputs are the sum
    network's divided by one common factor."""
    shapes, c_h_w = [], tuple(image_shape)
    for layer in layers:
        shapes.append(c_h_w)
        if layer[0] == "conv":
            _, cout, k, s, p = layer
            c_h_w = (cout, (c_h_w[1] + 2 * p - k) // s + 1, (c_h_w[2] + 2 * p - k) // s + 1)
        else:
            c_h_w = (layer[1],)
    unit_scale = np.ones(image_shape[0])
    g_out, b_out = [], []
    for index, (layer, gl, bl, in_shape) in enumerate(zip(layers, g, b, shapes)):
        w = scale_inputs(layer, signed_weights(layer, gl), unit_scale, in_shape)
        total = node_total(layer, w)
        cond = split(layer, w)
        last = index == len(layers) - 1
        pad = (total.max() - total) if last else np.where(total > 0, 0.0, 1.0)
        if np.any(pad > 0):  # equal conductance on +v and -v: no net current, more G
            per_input = pad / (cond.shape[0] if layer[0] == "dense" else cond[0].size)
            cond = cond + (per_input[None, :] if layer[0] == "dense" else per_input[:, None, None, None])
            total = total + pad
        g_out.append(cond)
        b_out.append(np.asarray(bl, dtype=np.float64).copy())
        unit_scale = total
    return g_out, b_out


def scale_layers(net, loading, g_layer_max):
    """Scale each layer's conductances and biases together (the feed-forward pass is unchanged).

    loading None: every crossbar's largest conductance becomes ``g_layer_max``. A number R: the
    first crossbar's largest becomes ``g_layer_max`` and every crossbar above loads each node below
    with at most R times that node's own crossbar conductance. Returns the largest such ratio per
    boundary after scaling."""
    w, b = [x.copy() for x in net.w], [x.copy() for x in net.b]
    for l in range(len(w)):
        c = g_layer_max / w[l].max()
        if loading is not None and l > 0:
            net.set_params(w, b)
            views = net.crossbar_views()
            c = loading / np.max(views[l].degree_in / views[l - 1].degree_out)
        w[l], b[l] = w[l] * c, b[l] * c
    net.set_params(w, b)
    views = net.crossbar_views()
    return [float(np.max(views[l].degree_in / views[l - 1].degree_out)) for l in range(1, len(w))]


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--surrogate", required=True, metavar="DIR", help="folder of a circuit_surrogate.py run (its surrogate.pt)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset (digits needs none)")
    p.add_argument("--test-subset", type=int, default=None, metavar="N", help="seeded random N test images (default: all)")
    p.add_argument("--loading", default="0.01", metavar="R",
                   help="largest conductance a crossbar puts on a node below, over that node's own; 'equal': "
                        "every crossbar's largest conductance at half of g_max instead (default: 0.01)")
    p.add_argument("--output-rms", default="1", metavar="V",
                   help="RMS of the outputs over 512 training images, volts; 'fit': the scale and output shift that "
                        "fit one-hot targets of 1 V there best (least squares), a start for EP training with the "
                        "squared error; 'logits': outputs equal to the surrogate's logits in volts, a start for EP "
                        "training with the cross-entropy nudge (default: 1)")
    p.add_argument("--hidden-rms", type=float, default=None, metavar="V",
                   help="then move every hidden layer to this RMS (volts, over its active nodes on 200 training "
                        "images) with amplifiers between the layers and a smaller input gain, the same function "
                        "with ideal diodes (default: a passive circuit)")
    p.add_argument("--tol", type=float, default=1e-13, metavar="A", help="KCL tolerance of the free phase (default: 1e-13)")
    p.add_argument("--max-iter", type=int, default=100000, help="sweep cap of the free phase (default: 100000)")
    p.add_argument("--threads", type=int, default=1, help="numba threads (default: 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for checkpoint.pt and metrics.json (must not hold them)")
    args = p.parse_args(argv)
    try:
        from epsim.checkpoint import load_checkpoint

        src = Path(args.surrogate) / "surrogate.pt"
        if not src.is_file():
            raise EpsimError(f"{src}: no such file (run analysis/circuit_surrogate.py --out {args.surrogate} first)")
        try:
            loading = None if args.loading == "equal" else float(args.loading)
        except ValueError:
            loading = -1.0
        if loading is not None and not (np.isfinite(loading) and loading > 0):
            raise EpsimError(f"--loading must be a positive number or 'equal', got {args.loading!r}")
        if args.hidden_rms is not None and not (np.isfinite(args.hidden_rms) and args.hidden_rms > 0):
            raise EpsimError("--hidden-rms must be a positive number of volts")
        if args.output_rms not in ("fit", "logits"):
            try:
                rms_V = float(args.output_rms)
            except ValueError:
                rms_V = -1.0
            if not (np.isfinite(rms_V) and rms_V > 0):
                raise EpsimError(f"--output-rms must be a positive number of volts, 'fit' or 'logits', "
                                 f"got {args.output_rms!r}")
        for name in ("tol", "max_iter", "threads"):
            value = getattr(args, name)
            if not (np.isfinite(value) and value > 0):
                raise EpsimError(f"--{name.replace('_', '-')} must be positive")
        out = Path(args.out)
        for name in ("checkpoint.pt", "metrics.json"):
            if (out / name).exists():
                raise EpsimError(f"{out / name} exists: choose another --out")
        state = load_checkpoint(src)
        cfg = state["config"]
        if cfg.get("leak_ratio", 0.0) or (cfg["node"] == "average" and cfg["weights"] != "conductance"):
            raise EpsimError(f"{src}: only sum nodes, or average nodes with conductances, map onto the circuit")
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.surrogate}: {exc}", file=sys.stderr)
        return 2
    import torch

    from epsim.checkpoint import save_checkpoint, write_json
    from epsim.data import default_data_dir, load_dataset
    from epsim.learning.ep import free_phase_counts
    from epsim.models.arch import parse_arch
    from epsim.models.registry import build_circuit_model
    from epsim.operating_point import max_node_voltages, rescaled
    from epsim.solvers.factory import SolverConfig, make_solver

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import circuit_surrogate as surrogate
    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    ds = load_dataset(cfg["dataset"], args.data_dir or cfg.get("data_dir") or default_data_dir(),
                      test_subset=args.test_subset, seed=cfg["seed"])
    layers = parse_arch(cfg["arch"])
    g, b = [np.asarray(x, dtype=np.float64) for x in state["g"]], [np.asarray(x, dtype=np.float64) for x in state["b"]]
    source = surrogate.Surrogate(layers, ds.x_train.shape[1:], node=cfg["node"], weights=cfg["weights"],
                                 input_gain_V=cfg["input_gain"], input_center=cfg["input_center"], seed=cfg["seed"])
    source.load(g, b)
    if cfg["node"] == "sum":
        g, b = average_node_parameters(layers, ds.x_train.shape[1:], g, b)
    gain = cfg["input_gain"]
    net = build_circuit_model("arch", ds.image_shape, ds.num_classes, arch=cfg["arch"], input_gain_V=gain,
                              input_center=cfg["input_center"], differential=True)
    net.set_params(g, b)
    ratios = scale_layers(net, loading, 0.5 * net.w_bounds[1])

    compiled = surrogate.Surrogate(layers, ds.x_train.shape[1:], input_gain_V=gain,
                                   input_center=cfg["input_center"], seed=cfg["seed"])

    compiled.load(net.w, net.b)
    probe = surrogate.outputs(compiled, ds.x_train[:512]).numpy()
    shift_V = 0.0
    if args.output_rms == "fit":  # outputs k o + shift, least squares against one-hot targets of 1 V
        target = np.eye(probe.shape[1])[ds.y_train[:512]]
        design = np.stack([probe.ravel(), np.ones(probe.size)], axis=1)
        (factor, shift_V), *_ = np.linalg.lstsq(design, target.ravel(), rcond=None)
        if not factor > 0:
            print(f"error: {src}: its outputs do not grow with the targets; use --output-rms V", file=sys.stderr)
            return 2
    elif args.output_rms == "logits":  # undo the map's common factor: outputs = logits, in volts
        logits = surrogate.outputs(source, ds.x_train[:512]).numpy()
        factor = float(np.sum(probe * logits) / np.sum(probe * probe))
    else:
        factor = float(args.output_rms) / float(np.sqrt(np.mean(probe ** 2)))
    net.input_gain_V = gain * float(factor)
    b_scaled = [x * float(factor) for x in net.b]
    b_scaled[-1] = b_scaled[-1] + float(shift_V) * net.crossbar_views()[-1].degree_out  # outputs + shift_V
    net.set_params(net.w, b_scaled)
    compiled.input_gain_V = net.input_gain_V
    compiled.load(net.w, net.b)
    ref = surrogate.outputs(source, ds.x_test).numpy()
    ff = surrogate.outputs(compiled, ds.x_test).numpy()
    ff_centred = ff - float(shift_V)
    k = float(np.sum(ff_centred * ref) / np.sum(ref * ref))  # the common factor of the map
    max_rel_error = float(np.max(np.abs(ff_centred - k * ref)) / np.max(np.abs(k * ref)))
    solver = make_solver(SolverConfig(tol_A=args.tol, max_iter=args.max_iter))
    operating_point = None
    if args.hidden_rms is not None:
        net, operating_point = rescaled(net, solver, ds.x_train, args.hidden_rms, cfg["seed"])
    t0 = time.perf_counter()
    correct, unconverged, worst = free_phase_counts(net, solver, ds.x_test, ds.y_test, batch_size=250)
    seconds = time.perf_counter() - t0
    y = ds.y_test
    result = {
        "kind": "compiled-surrogate", "surrogate": str(src), "loading": loading, "output_rms": args.output_rms,
        "loading_measured_per_boundary": ratios, "input_gain_V": net.input_gain_V,
        "n_test": int(len(y)),
        "surrogate_test_accuracy": float(np.mean(ref.argmax(1) == y)),
        "compiled_feedforward_test_accuracy": float(np.mean(ff.argmax(1) == y)),
        "feedforward_max_rel_error": max_rel_error,
        "circuit_test_accuracy": correct / len(y), "circuit_unconverged": int(unconverged),
        "circuit_max_residual_A": worst, "tol_A": args.tol, "circuit_seconds": seconds,
        "largest_conductance_per_layer": [float(w.max()) for w in net.w],
        "amp_gains": [float(a) for a in net.amp_gains], "operating_point": operating_point,
        "largest_node_voltage_per_layer_V": max_node_voltages(net, solver, ds.x_test[:500]),
    }
    out.mkdir(parents=True, exist_ok=True)
    r = net.ranges
    config = {"dataset": cfg["dataset"], "model": "arch", "arch": cfg["arch"], "backend": "numba",
              "differential": True, "input_gain_V": net.input_gain_V, "input_center": net.input_center,
              "amp_gain": [float(a) for a in net.amp_gains], "diode": "ideal", "device_model": "ideal",
              "g_unit_S": r.g_unit_S, "g_min_S": r.g_min_S, "g_max_S": r.g_max_S, "target_high_V": 1.0,
              "tol_A": args.tol, "max_iter": args.max_iter}
    save_checkpoint(out / "checkpoint.pt", {"kind": "circuit", "model": net.describe(), "config": config,
                                            "w": net.w, "b": net.b, "compiled_from": str(src)})
    write_json(out / "metrics.json", result)
    print(f"surrogate {result['surrogate_test_accuracy']:.4f}, compiled feed-forward "
          f"{result['compiled_feedforward_test_accuracy']:.4f} (max rel error {max_rel_error:.1e}), circuit "
          f"{result['circuit_test_accuracy']:.4f} ({unconverged} unconverged, {seconds:.0f} s); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
