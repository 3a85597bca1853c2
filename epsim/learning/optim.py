"""Update rules for normalised conductances and bias currents, projected onto ``[Gmin, Gmax]``.

Both take the EP gradient estimate of each batch (built from the local voltage drops) and
change every conductance by an amount that depends only on that conductance's own gradient
history: ``sgd`` keeps one running sum per device (heavy-ball momentum), ``adam`` two running
averages (of the gradient and of its square) and the step count, and divides the first by
the square root of the second, so every conductance moves by about ``lr`` per step whatever
the size of its layer's EP signal.
"""
from __future__ import annotations

import numpy as np

from ..errors import EpsimError
from ..solvers.threads import threads_for
from .low_rank import LowRankGrad, as_dense

# one conductance update costs about this many times less than one node update of a sweep,
# for deciding when the update kernel is worth a second thread
UPDATE_ELEMENTS_PER_NODE = 16


class ProjectedSGD:
    """Heavy-ball SGD: ``m <- mu*m + g``; ``p <- p - lr*m``; conductances clipped to range.

    lr_w / lr_b: learning rates for conductances and biases (normalised units), scalars
    or one value per layer. Parameters are updated in place in ``net.w`` / ``net.b``.
    device: an :class:`epsim.learning.memristive.DeviceArray` through which every conductance
    change ``-lr*m`` is written (pulses, nonlinearity, noise, per-device bounds); None or an
    ideal device keeps the exact update clipped to ``[Gmin, Gmax]``.
    """

    def __init__(self, net, lr_w, lr_b=None, momentum=0.9, device=None):
        self.net = net
        L = net.num_layers
        self.lr_w = np.broadcast_to(np.asarray(lr_w, dtype=float), (L,)).copy()
        self.lr_b = np.broadcast_to(np.asarray(lr_w if lr_b is None else lr_b, dtype=float), (L,)).copy()
        self.momentum = float(momentum)
        self.scale = 1.0  # schedule multiplier applied to both learning rates
        self.m_w = [np.zeros_like(w) for w in net.w]
        self.m_b = [np.zeros_like(b) for b in net.b]
        self.device = device

    def step(self, grad_w, grad_b):
        """Apply one update; ``grad_w`` entries are arrays or :class:`LowRankGrad` factors."""
        lo, hi = self.net.w_bounds
        ideal = self.device is None or self.device.is_ideal
        with threads_for(sum(w.size for w in self.net.w) // UPDATE_ELEMENTS_PER_NODE):
            for l in range(self.net.num_layers):
                g = grad_w[l]
                if isinstance(g, LowRankGrad) and ideal:
                    g.sgd_step(self.net.w[l], self.scale * self.lr_w[l], lo, hi, self.momentum,
                               self.m_w[l] if self.momentum else None)
                else:
                    self._dense_step(l, as_dense(g), lo, hi)
                self.m_b[l] *= self.momentum
                self.m_b[l] += grad_b[l]
                self.net.b[l] -= self.scale * self.lr_b[l] * self.m_b[l]

    def _dense_step(self, l, grad, lo, hi):
        self.m_w[l] *= self.momentum
        self.m_w[l] += grad
        self._write(l, -self.scale * self.lr_w[l] * self.m_w[l], lo, hi)

    def _write(self, l, change, lo, hi):
        """Change layer ``l``'s conductances by ``change``: exactly, clipped to ``[lo, hi]``, or
        through the device model."""
        w = self.net.w[l]
        if self.device is None or self.device.is_ideal:
            w += change
            np.clip(w, lo, hi, out=w)
        else:
            self.device.update(l, w, change)

    def state(self) -> dict:
        return {"m_w": [m.copy() for m in self.m_w], "m_b": [m.copy() for m in self.m_b]}

    def load_state(self, state: dict):
        self.m_w = [np.array(m, dtype=float) for m in state["m_w"]]
        self.m_b = [np.array(m, dtype=float) for m in state["m_b"]]

    def first_step(self, l: int, grad) -> np.ndarray:
        """The conductance change (normalised units, unclipped) that a freshly started
        optimizer applies to layer ``l`` for the gradient ``grad``, at the base rate."""
        return -self.lr_w[l] * as_dense(grad)


class ProjectedAdam(ProjectedSGD):
    """Adam (Kingma & Ba 2015) on conductances and biases, conductances clipped to range.

    ``m <- b1*m + (1-b1)*g``; ``v <- b2*v + (1-b2)*g^2``; ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``
    with the bias-corrected ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``. ``lr`` (per
    layer, as for SGD) is then the largest change of a parameter per step, in normalised
    units (``g_unit`` for conductances, V for biases). ``eps`` is in the gradient's units.
    """

    def __init__(self, net, lr_w, lr_b=None, betas=(0.9, 0.999), eps=1e-8, device=None):
        super().__init__(net, lr_w, lr_b, momentum=0.0, device=device)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.v_w = [np.zeros_like(w) for w in net.w]
        self.v_b = [np.zeros_like(b) for b in net.b]
        self.t = 0

    def step(self, grad_w, grad_b):
        lo, hi = self.net.w_bounds
        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        for l in range(self.net.num_layers):
            dw = self._moments(as_dense(grad_w[l]), self.m_w[l], self.v_w[l], c1, c2)
            self._write(l, -self.scale * self.lr_w[l] * dw, lo, hi)
            self.net.b[l] -= self.scale * self.lr_b[l] * self._moments(grad_b[l], self.m_b[l], self.v_b[l], c1, c2)

    def _moments(self, g, m, v, c1, c2) -> np.ndarray:
        """Update the running averages ``m``, ``v`` in place with ``g``; the normalised step."""
        m *= self.b1
        m += (1.0 - self.b1) * g
        v *= self.b2
        v += (1.0 - self.b2) * np.square(g)
        return (m / c1) / (np.sqrt(v / c2) + self.eps)

    def state(self) -> dict:
        return {**super().state(), "v_w": [v.copy() for v in self.v_w], "v_b": [v.copy() for v in self.v_b],
                "t": self.t}

    def load_state(self, state: dict):
        super().load_state(state)
        self.v_w = [np.array(v, dtype=float) for v in state["v_w"]]
        self.v_b = [np.array(v, dtype=float) for v in state["v_b"]]
        self.t = int(state["t"])

    def first_step(self, l: int, grad) -> np.ndarray:
        g = as_dense(grad)
        return -self.lr_w[l] * g / (np.abs(g) + self.eps)


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(config, net, device=None) -> ProjectedSGD:
    """The update rule ``config.optimizer`` names, at the rates of :func:`layer_learning_rates`."""
    lr_w, lr_b = layer_learning_rates(config, net)
    kind = getattr(config, "optimizer", "sgd")
    if kind == "sgd":
        return ProjectedSGD(net, lr_w, lr_b, config.momentum, device=device)
    if kind == "adam":
        return ProjectedAdam(net, lr_w, lr_b, device=device)
    raise EpsimError(f"unknown optimizer {kind!r}; choose from {', '.join(OPTIMIZERS)}")


def layer_learning_rates(config, net) -> tuple:
    """``(lr_w, lr_b)``, one value per layer: ``--lr`` / ``--lr-bias`` times ``--lr-layers``.

    ``config``: any object with ``lr``, ``lr_bias``, ``lr_layers`` and ``model`` (a training
    run's config, or the one recorded in its checkpoint); ``net``: the network they apply to.
    """
    lr_b = config.lr if config.lr_bias is None else config.lr_bias
    if config.lr_layers is None:
        return config.lr, lr_b
    if len(config.lr_layers) != net.num_layers:
        raise EpsimError(f"--lr-layers needs {net.num_layers} values for the {config.model} "
                         f"({net.num_layers} layers of conductances), got {len(config.lr_layers)}")
    m = np.asarray(config.lr_layers, dtype=float)
    return config.lr * m, lr_b * m
