"""Feed-forward software surrogate of a circuit network, trained by backpropagation.

    python analysis/circuit_surrogate.py --arch conv:16:5:2,conv:32:3:2,dense:10 \
        --dataset mnist --data-dir DATA --epochs 3 --out DIR

Asks whether an accuracy limit of a trained circuit belongs to the function class the circuit
computes or to the way it is trained (EP on the bidirectional equilibrium). The surrogate is the
circuit's free-phase node equation with the currents from the layer above left out, so that
each layer follows from the one below in a single pass:

    v_l = clamp((sum_j g_ij u_j + b_i) / sum_j g_ij)          (``--node average``, the circuit)
    v_l = clamp(sum_j g_ij u_j + b_i)                          (``--node sum``)

``u`` is the layer below as presented to the crossbar: the input sources ``gain (x - c)`` and
``gain (c - x)``, and every hidden layer as ``(v, -v)`` (the circuit's ``--differential``
layers); ``g >= 0`` (``--weights conductance``, projected after each step) or of either sign
(``--weights signed``, an ordinary network); hidden units half excitatory (clamped at >= 0 V),
half inhibitory (<= 0 V), linear outputs. Initial conductances as ``epsim.train --init
clamped-uniform`` (the ``-v`` halves start at 0); ``--cost mse`` is the circuit's squared error
against one-hot targets of ``--target-high`` volts, ``--cost ce`` a softmax cross-entropy.
Trained with Adam (per-layer rates ``--lr`` times ``--lr-layers``, biases at the same rates) on
a cosine schedule over ``--epochs``, batch ``--batch-size``; the test accuracy after every epoch
goes to ``DIR/metrics.json``, the trained parameters to ``DIR/surrogate.pt`` (which
``analysis/compile_surrogate.py`` maps onto a circuit).

``--leak-ratio R`` gives every free node a fixed conductance to 0 V of ``R`` times its initial
crossbar conductance and presents every layer (the input sources included) to the next through
amplifiers of gain ``1 + R``: the network starts with the outputs of ``R = 0``, and as ``R`` grows
its node moves from the average towards a weighted sum of the layer below.

With ``--node average --weights conductance --cost mse`` and the circuit's input gain this is
the circuit's function class without its top-down currents; the other settings remove one
constraint at a time.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from epsim.cli import ArgumentParser, set_command_environment
from epsim.errors import EpsimError

set_command_environment()


class Surrogate:
    """The feed-forward surrogate's parameters and forward pass.

    layers: parsed spec (:func:`epsim.models.arch.parse_arch`); image_shape: (C, H, W);
    g: per connection, dense ``(n_in, n_out)`` or conv ``(C_out, C_in, K, K)`` tensors over
    the presented inputs (the input sources ``(+x, -x)``, a hidden layer ``(v, -v)``);
    b: per free layer, one bias (normalised current) per channel or unit.
    """

    def __init__(self, layers, image_shape, *, node="average", weights="conductance",
                 input_gain_V=200.0, input_center=0.0, leak_ratio=0.0, seed=0):
        import torch

        self.layers, self.node, self.weights = layers, node, weights
        self.input_gain_V, self.input_center = float(input_gain_V), float(input_center)
        self.leak_ratio = float(leak_ratio)
        gen = torch.Generator().manual_seed(seed)
        c, h, w = image_shape
        shape, self.g, self.b = (2 * c, h, w), [], []
        for index, layer in enumerate(layers):
            first = index == 0
            if layer[0] == "conv":
                _, cout, k, s, p = layer
                if len(shape) != 3:
                    raise EpsimError("--arch: a conv layer cannot follow a dense one")
                h_out, w_out = (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1
                if h_out < 1 or w_out < 1:
                    raise EpsimError(f"--arch entry conv:{cout}:{k}:{s}:{p} does not fit a "
                                     f"{shape[1]}x{shape[2]} input")
                g = self._draw((cout, shape[0], k, k), shape[0] * k * k, first, 1, gen)
                self.b.append(torch.zeros(cout, dtype=torch.float64))
                shape = (2 * cout, h_out, w_out)
            else:
                n_in = int(np.prod(shape))
                g = self._draw((n_in, layer[1]), n_in, first, 0, gen)
                self.b.append(torch.zeros(layer[1], dtype=torch.float64))
                shape = (2 * layer[1],)
            self.g.append(g)
        self.leak = [self.leak_ratio * self._node_total(layer, g) for layer, g in zip(layers, self.g)]
        for t in self.g + self.b:
            t.requires_grad_(True)

    @staticmethod
    def _node_total(layer, g):
        """Total crossbar conductance of every node a connection drives: (C_out,) or (n_out,)."""
        return g.sum(dim=(1, 2, 3)) if layer[0] == "conv" else g.sum(dim=0)

    def _draw(self, shape, fan_in, first, in_axis, gen):
        """Clamped-uniform conductances (uniform on (-s, s) clamped at 0, s = 1/sqrt(fan-in of
        the presented layer's own nodes)); signed weights uniform on (-s, s)."""
        import torch

        own = fan_in if first else fan_in // 2
        s = 1.0 / math.sqrt(own)
        g = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * s
        if self.weights == "signed":
            return g
        g = g.clamp(min=0)
        if not first:  # the -v half of a differential layer starts at 0
            g.narrow(in_axis, shape[in_axis] // 2, shape[in_axis] // 2).zero_()
        return g

    def forward(self, x):
        """Output voltages (B, K) of images ``x`` (B, C, H, W) in [0, 1] (differentiable)."""
        import torch
        import torch.nn.functional as F

        u = x - self.input_center
        gain = 1.0 + self.leak_ratio
        u = gain * self.input_gain_V * torch.cat([u, -u], dim=1)
        last = len(self.layers) - 1
        for index, (layer, g, b, leak) in enumerate(zip(self.layers, self.g, self.b, self.leak)):
            total = leak + self._node_total(layer, g)
            if layer[0] == "conv":
                _, _, _, s, p = layer
                d = F.conv2d(u, g, stride=s, padding=p) + b[None, :, None, None]
                if self.node == "average":
                    d = d / total[None, :, None, None]
            else:
                d = u.flatten(1) @ g + b
                if self.node == "average":
                    d = d / total
            if index == last:
                return d.flatten(1)
            half = d.shape[1] // 2
            v = torch.cat([d[:, :half].clamp(min=0), d[:, half:].clamp(max=0)], dim=1)
            u = gain * torch.cat([v, -v], dim=1)

    def load(self, g, b):
        """Set the conductances/weights ``g`` and biases ``b`` (lists of arrays, shapes as built)."""
        import torch

        with torch.no_grad():
            for t, x in zip(self.g + self.b, list(g) + list(b)):
                t.copy_(torch.as_tensor(x))

    def project(self):
        """Conductances back to ``g >= 0`` after an optimiser step (signed weights: no-op)."""
        if self.weights == "conductance":
            import torch

            with torch.no_grad():
                for g in self.g:
                    g.clamp_(min=0)


def cost(out_V, labels, kind: str, target_high_V: float):
    """Mean over the batch of ``0.5 |out - target|^2`` (V^2) or of the cross-entropy."""
    import torch.nn.functional as F

    if kind == "ce":
        return F.cross_entropy(out_V, labels)
    target = F.one_hot(labels, out_V.shape[1]).to(out_V.dtype) * target_high_V
    return 0.5 * ((out_V - target) ** 2).sum(dim=1).mean()


def outputs(model, x, batch=1000):
    """Output voltages (N, K) of images ``x`` (N, C, H, W) (tensor or array), without gradients."""
    import torch

    x = torch.as_tensor(x, dtype=torch.float64)
    with torch.no_grad():
        return torch.cat([model.forward(x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(model, x, y, batch=1000) -> float:
    """Fraction of images ``x`` (N, C, H, W) whose largest output is label ``y``."""
    return float((outputs(model, x, batch).argmax(1) == y).double().mean())


def train(model, ds, *, epochs, batch_size, lr, lr_layers, cost_kind, target_high_V, seed,
          bias_lr_ratio=1.0, progress=print) -> list:
    """Train ``model`` on ``ds`` (an :class:`epsim.data.Dataset`); one history entry per epoch."""
    import torch

    x_train = torch.as_tensor(ds.x_train, dtype=torch.float64)
    y_train = torch.as_tensor(ds.y_train, dtype=torch.long)
    x_test = torch.as_tensor(ds.x_test, dtype=torch.float64)
    y_test = torch.as_tensor(ds.y_test, dtype=torch.long)
    groups = [group for g, b, m in zip(model.g, model.b, lr_layers)
              for group in ({"params": [g], "lr": lr * m}, {"params": [b], "lr": lr * m * bias_lr_ratio})]
    opt = torch.optim.Adam(groups)
    base = [grp["lr"] for grp in groups]
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=gen)
        total, correct = 0.0, 0
        for step in range(steps_per_epoch):
            frac = (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)
            for grp, lr0 in zip(groups, base):
                grp["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * frac))
            idx = order[step * batch_size:(step + 1) * batch_size]
            out = model.forward(x_train[idx])
            loss = cost(out, y_train[idx], cost_kind, target_high_V)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.project()
            total += float(loss.detach()) * len(idx)
            correct += int((out.detach().argmax(1) == y_train[idx]).sum())
        entry = {"epoch": epoch + 1, "train_loss": total / len(y_train),
                 "train_accuracy": correct / len(y_train), "test_accuracy": accuracy(model, x_test, y_test),
                 "wall_seconds": time.perf_counter() - t0}
        history.append(entry)
        progress(f"epoch {epoch + 1}/{epochs}: train loss {entry['train_loss']:.4f} acc "
                 f"{entry['train_accuracy']:.4f}, test acc {entry['test_accuracy']:.4f} "
                 f"({entry['wall_seconds']:.0f} s)")
    return history


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True, help="layers as in epsim.train --arch, e.g. conv:16:5:2,conv:32:3:2,dense:10")
    p.add_argument("--dataset", default="mnist", help="dataset name as in epsim.train (default: mnist)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset (digits needs none)")
    p.add_argument("--train-subset", type=int, default=None, metavar="N", help="seeded random N training images (default: all)")
    p.add_argument("--test-subset", type=int, default=None, metavar="N", help="seeded random N test images (default: all)")
    p.add_argument("--node", choices=("average", "sum"), default="average",
                   help="node equation: the circuit's conductance-weighted average, or a weighted sum (default: average)")
    p.add_argument("--weights", choices=("conductance", "signed"), default="conductance",
                   help="conductances >= 0 on differential layers, or weights of either sign (default: conductance)")
    p.add_argument("--cost", choices=("mse", "ce"), default="mse",
                   help="squared error against one-hot targets (the circuit's) or cross-entropy (default: mse)")
    p.add_argument("--input-gain", type=float, default=200.0, metavar="V", help="input source voltage for a pixel of value 1 (default: 200)")
    p.add_argument("--leak-ratio", type=float, default=0.0, metavar="R",
                   help="every free node also has a fixed conductance to 0 V of R times its initial crossbar "
                        "conductance, and every layer (the input sources included) reaches the next through "
                        "amplifiers of gain 1 + R, so the network starts as with R = 0; large R makes the node "
                        "nearly a weighted sum (default: 0)")
    p.add_argument("--input-center", type=float, default=0.0, metavar="PIXEL", help="pixel value driven at 0 V (default: 0)")
    p.add_argument("--target-high", type=float, default=1.0, metavar="V", help="target voltage of the correct output (default: 1)")
    p.add_argument("--lr", type=float, default=0.002, help="Adam rate at the start of the cosine schedule (default: 0.002)")
    p.add_argument("--lr-layers", type=float, nargs="+", default=None, metavar="M",
                   help="per-connection multipliers of --lr, input side first (default: halved per layer, 1 0.5 0.25 ...)")
    p.add_argument("--bias-lr-ratio", type=float, default=1.0, metavar="K",
                   help="biases' Adam rate over the conductances' (default: 1)")
    p.add_argument("--epochs", type=int, default=3, help="epochs (default: 3)")
    p.add_argument("--batch-size", type=int, default=4, help="images per step (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, subsets and order (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.json (must not hold one already)")
    args = p.parse_args(argv)
    try:
        from epsim.models.arch import parse_arch

        layers = parse_arch(args.arch)
        if layers[-1][0] != "dense":
            raise EpsimError("--arch must end with the dense output layer, e.g. ...,dense:10")
        lr_layers = args.lr_layers or [0.5 ** i for i in range(len(layers))]
        if len(lr_layers) != len(layers):
            raise EpsimError(f"--lr-layers needs {len(layers)} values, one per connection of --arch")
        for name in ("input_gain", "target_high", "lr", "bias_lr_ratio", "epochs", "batch_size", "threads"):
            value = getattr(args, name)
            if not (np.isfinite(value) and value > 0):
                raise EpsimError(f"--{name.replace('_', '-')} must be positive")
        if not (np.isfinite(args.leak_ratio) and args.leak_ratio >= 0):
            raise EpsimError("--leak-ratio must be a number >= 0")
        if not all(np.isfinite(m) and m >= 0 for m in lr_layers):
            raise EpsimError("--lr-layers must be numbers >= 0")
        out = Path(args.out)
        if (out / "metrics.json").exists():
            raise EpsimError(f"{out / 'metrics.json'} exists: choose another --out")
        import torch

        from epsim.checkpoint import write_json
        from epsim.data import default_data_dir, load_dataset

        torch.set_num_threads(args.threads)
        ds = load_dataset(args.dataset, args.data_dir or default_data_dir(), train_subset=args.train_subset,
                          test_subset=args.test_subset, seed=args.seed)
        if layers[-1][1] != ds.num_classes:
            raise EpsimError(f"--arch ends with dense:{layers[-1][1]}, {args.dataset} has {ds.num_classes} classes")
        model = Surrogate(layers, ds.x_train.shape[1:], node=args.node, weights=args.weights,
                          input_gain_V=args.input_gain, input_center=args.input_center,
                          leak_ratio=args.leak_ratio, seed=args.seed)
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    history = train(model, ds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_layers=lr_layers,
                    cost_kind=args.cost, target_high_V=args.target_high, seed=args.seed,
                    bias_lr_ratio=args.bias_lr_ratio)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config["lr_layers"] = lr_layers
    from epsim.checkpoint import save_checkpoint

    save_checkpoint(out / "surrogate.pt", {"kind": "circuit-surrogate", "config": config,
                                           "g": [g.detach().numpy() for g in model.g],
                                           "b": [b.detach().numpy() for b in model.b]})
    write_json(out / "metrics.json", {"kind": "circuit-surrogate", "config": config, "history": history,
                                      "test_accuracy": history[-1]["test_accuracy"]})
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
