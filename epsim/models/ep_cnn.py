"""Software EP-CNN: the convolutional Hopfield network of Laborieux et al. 2021.

The network has an input ``x`` (normalised pixels, held fixed), ``L``
hidden convolutional layers ``s_1 … s_L`` and a linear readout outside the energy:

* synapse ``l`` is a ``k×k`` stride-1 convolution ``conv_l`` (weights ``W_l``, bias
  ``b_l``) from ``s_{l-1}`` followed by a ``2×2`` stride-2 max-pool ``P``;
* primitive function (per sample) ``Φ(x, s) = Σ_l ⟨P(conv_l(s_{l-1})), s_l⟩``;
* activation: hard sigmoid ``σ(u) = clip(u/2, 0, 1)``, so a fixed point
  ``s_l = σ(∂Φ/∂s_l)`` is a stationary point of ``E = Σ_l ‖s_l‖² − Φ`` on the box
  ``[0, 1]``;
* readout, one of two costs:

  - ``"cross-entropy"`` (Laborieux's "softmax" readout): ``logits = W_fc · flatten(s_L) + b_fc``
    is not part of Φ; the cost is the cross-entropy ``ℓ(logits, y)`` and nudging adds
    ``−β·ℓ`` to Φ;
  - ``"squared-error"`` (the output layer inside the energy, as in Laborieux's "mse"
    variant and Scellier et al. 2023's deep convolutional Hopfield network): a linear
    output layer ``o`` (``(B, K)``) joins the state, Φ gains ``⟨W_fc · flatten(s_L) + b_fc, o⟩``
    and E gains ``‖o‖²``, so in the free phase ``o = (W_fc · flatten(s_L) + b_fc) / 2``
    (the logits) and the top hidden layer also receives ``W_fcᵀ o``; the cost is
    ``ℓ = ½‖o − onehot(y)‖²`` and nudging adds ``−β·ℓ`` to Φ, whose stationary output is
    ``o = (W_fc · flatten(s_L) + b_fc + β·onehot(y)) / (2 + β)`` (solved exactly at each
    update);
* symmetric (centred) EP: phases ``+β`` and ``−β`` both start at the free fixed point
  and the gradient estimate is
  ``∇θ ≈ −[∂Φ/∂θ(s^{+β}, +β) − ∂Φ/∂θ(s^{−β}, −β)] / (2β)``.

Two relaxation solvers:

* ``"sync"`` — the published loop: all layers updated at once from the old state,
  ``s ← σ(∂Φ/∂s)``, at most ``max_iter`` steps (T1 = 250 free, T2 = 30 nudged).
  Without autograd each sample stops as soon as a step moves none of its units by
  more than ``tol``: samples are independent, so every sample follows exactly the
  published trajectory, cut once converged (``tol = 0``: only at an exact fixed
  point).  This is the fast solver that reaches the *same* fixed point; with autograd
  on (BPTT) all steps run.  Measured: max |Δs| to the full 250-step loop ≈ 1e-7 at
  ``tol = 1e-7`` (float32; ``benchmarks/bench_ep_cnn.py``).  Caveats: max-pooling
  makes the dynamics piecewise linear, so a near-tie in a pooling window can switch
  after a pause (a stop at ``tol = 1e-6`` once missed a later 4e-4 jump); and with
  strong coupling the synchronous loop can oscillate with period 2 (units flipping
  0 ↔ 1) — such samples run to the cap and are reported as unconverged.
* ``"async"`` — odd/even (block Gauss–Seidel) sweeps: layers 1, 3, … then 2, 4, …,
  each from its neighbours' newest values, each sample stopped (without autograd) after
  the first sweep that moves none of its units by more than ``tol`` (``max_iter`` sweeps at
  most), convolutions whose input did not change not recomputed.  In the free phase each update maximises a linear minorant
  of Φ, so the energy decreases monotonically (no oscillation).  But Φ is not
  concave (max-pool), the energy has several stationary points, and these sweeps
  generally reach a *different* one than the synchronous loop (max |Δs| ≈ 1e-2 on
  random CIFAR-10 weights), so it is an option, not the default.

``∂Φ/∂s`` is computed in closed form (convolution, max-pool with indices, unpool,
transposed convolution) rather than by autograd of Φ, which is what makes a step
cheaper than the reference; all of it is differentiable, so BPTT through the
dynamics is plain autograd (:func:`bptt_gradients`).

Shapes: images ``(B, C, H, W)`` in ``[0, 1]`` pixel space (normalisation happens
inside the model, so attacks work on pixels); hidden states ``(B, c_l, h_l, w_l)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import EpsimError

SOLVERS = ("async", "sync")
COSTS = ("cross-entropy", "squared-error")

# Per-channel pixel statistics; Laborieux et al. divide by 3× the standard deviation
# so that normalised inputs stay inside the hard sigmoid's linear range.
PIXEL_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
PIXEL_STD = {"cifar10": (0.2023, 0.1994, 0.2010), "cifar100": (0.2673, 0.2564, 0.2762)}
EP_STD_SCALE = 3.0

_PAPER = dict(dataset="cifar10", paddings=(1, 1, 1, 0), t1=250, t2=30, beta=0.5, solver="sync",
              tol=1e-4, init_scale=1.0, input_std_scale=EP_STD_SCALE, lrs=(0.25, 0.15, 0.1, 0.08, 0.05), weight_decay=3e-4, momentum=0.9,
              optimizer="sgd", schedule="cosine", lr_min=1e-5, epochs=120, batch_size=128,
              augment=True)
EP_PRESETS = {
    # Laborieux et al. 2021 / Mansingh et al. 2023 (the seed paper's EP-CNN).
    "cifar10-paper": dict(_PAPER, channels=(128, 256, 512, 512)),
    "cifar100-paper": dict(_PAPER, dataset="cifar100", channels=(128, 256, 512, 1024)),
    # Sized for a 2-core CPU (measured on a busy one: about 1 s per batch of 32): an eighth
    # of the paper's width; the synchronous loop capped at T1 = 60 / T2 = 15 steps with
    # per-sample stops at 1e-4; inputs normalised by the plain std (the paper's 3x std
    # leaves the top layer of the default init almost silent: a long plateau at chance);
    # half the paper's layer rates, which are set for batch 128 (2 epochs on CIFAR-10:
    # 47.7 % with these, 43.2 % with the paper's).
    "cifar10-small": dict(_PAPER, channels=(16, 32, 64, 128), t1=60, t2=15, tol=1e-4,
                          input_std_scale=1.0, epochs=2, batch_size=32,
                          lrs=(0.125, 0.075, 0.05, 0.04, 0.025)),
    # 8x8 digits: two padded conv layers (8 -> 4 -> 2 after pooling), cifar10-small's dynamics
    # with a tighter per-sample stop, its layer rates spread over three synapses, no crops or
    # flips (94.7 % test accuracy after 8 epochs, seed 0, analysis/results/cpu).
    "digits": dict(_PAPER, dataset="digits", channels=(32, 64), paddings=(1, 1), t1=60, t2=15, tol=1e-5,
                   input_std_scale=1.0, epochs=8, batch_size=16, lrs=(0.125, 0.05, 0.025), augment=False),
}
# Scellier et al. 2023's deep convolutional Hopfield network (DCHN) recipe at cifar10-small's
# widths: the output layer inside the energy with a squared-error cost, odd/even sweeps
# (60 free, 20 per nudged phase, each sample stopped at 1e-4), centred EP, every layer padded
# (32 -> 16 -> 8 -> 4 -> 2), SGD momentum 0.9, cosine to 2e-6. Their network updates
# s <- clip(u, 0, 1) on E' = E / 2, so their numbers map onto this model's clip(u/2, 0, 1) as:
# weights and biases x2 (init: PyTorch's default bounds x 2·gain on the weights), beta x2 (their
# 0.1), learning rates x4 at the same per-sample step (their 0.03 at batch 128 = 0.03 here at
# batch 32), weight decay / 4 (their 2.5e-4). At these widths their gains (0.4 0.7 0.6 0.3 0.4)
# leave the top layer almost silent (mean activity 0.007) and their rates stayed at chance for
# 3 epochs of 5,000 images; gains 0.6 0.8 0.8 0.8 0.6 with cifar10-paper's layer-rate profile
# doubled learned (37 % after 2 such epochs; higher rates on the lower layers silenced them).
# Nudged phases stop at 1e-5: stopped at the free phase's 1e-4 their lower layers' response to
# the nudge is truncated (conv 1's update at cosine 0.955 with the converged EP gradient after
# one epoch, analysis/ep_budget.py; 1.000 at 1e-5).
EP_PRESETS["cifar10-dchn"] = dict(_PAPER, channels=(16, 32, 64, 128), paddings=(1, 1, 1, 1),
                                  cost="squared-error", solver="async", t1=60, t2=20, tol=1e-4, nudge_tol=1e-5,
                                  beta=0.2, init_gains=(0.6, 0.8, 0.8, 0.8, 0.6), input_std_scale=1.0,
                                  lrs=(0.5, 0.3, 0.2, 0.16, 0.1), weight_decay=6.25e-5, lr_min=2e-6,
                                  epochs=6, batch_size=32)
# cifar10-dchn sized for an hour on two cores (torchrun, two processes of one thread): its sweeps
# over-relaxed (omega 1.4: the same fixed points, reached in fewer sweeps once training has
# strengthened the coupling, so fewer samples are left out of the update) and Adam at 1e-3 on
# every synapse for 8 epochs (on 20,000 training images for 2 epochs: 48.9 % against the SGD
# recipe's 47.0 %, at 38 against 61 sweeps per sample in the second epoch).
EP_PRESETS["cifar10-hour"] = dict(EP_PRESETS["cifar10-dchn"], omega=1.4, optimizer="adam", lrs=(1e-3,) * 5,
                                  epochs=8)
# 28x28 MNIST: cifar10-small with a padded last layer (28 -> 14 -> 7 -> 3 -> 1 after pooling), no
# crops or flips; not tuned.
EP_PRESETS["mnist"] = dict(EP_PRESETS["cifar10-small"], dataset="mnist", paddings=(1, 1, 1, 1), augment=False)


def check_omega(omega: float, solver: str, option: str = "--ep-omega") -> None:
    """Raise :class:`EpsimError` unless ``omega`` is a relaxation factor ``solver`` accepts
    (``option``: the command-line name the message gives it)."""
    if not (math.isfinite(omega) and 1.0 <= omega < 2.0):
        raise EpsimError(f"the EP-CNN relaxation factor ({option}) must be in [1, 2), got {omega}")
    if omega != 1.0 and solver != "async":
        raise EpsimError(f"{option} {omega} needs the odd/even solver (--solver async); the synchronous "
                         "loop is the published one, always at 1")


def hard_sigmoid(u: torch.Tensor) -> torch.Tensor:
    """``clip(u/2, 0, 1)`` (Laborieux's ``my_hard_sig``: ``(1 + hardtanh(u − 1)) / 2``)."""
    return torch.clamp(0.5 * u, 0.0, 1.0)


@dataclass
class Relaxation:
    """Result of a relaxation: the state and its convergence certificate.

    Attributes:
        state: list of ``L`` tensors ``(B, c_l, h_l, w_l)``.
        iterations: steps (sync) or sweeps (async) done.
        residual: ``(B,)`` largest change of any unit in the last step/sweep
            (dimensionless, units are in ``[0, 1]``).
        tol: the tolerance ``converged`` refers to.
        sample_steps: ``(B,)`` steps or sweeps each sample ran (without autograd both
            solvers stop samples individually once converged).
    """

    state: list
    iterations: int
    residual: torch.Tensor
    tol: float
    sample_steps: torch.Tensor = None

    def __post_init__(self):
        if self.sample_steps is None:    # every sample ran every step
            self.sample_steps = torch.full_like(self.residual, self.iterations, dtype=torch.long)

    @property
    def converged(self) -> torch.Tensor:
        """``(B,)`` bool: the last step moved no unit by more than ``tol``."""
        return self.residual <= self.tol


class EPCNN(nn.Module):
    """Convolutional Hopfield network trained with EP (see the module docstring).

    Args:
        image_shape: ``(C, H, W)`` of the input images.
        num_classes: number of readout classes.
        channels: hidden channels per conv layer, e.g. ``(128, 256, 512, 512)``.
        paddings: zero padding of each conv (the paper uses ``(1, 1, 1, 0)``).
        kernel_size: conv kernel size (3); pool_size: max-pool size and stride (2).
        mean, std: per-channel pixel statistics for the internal normalisation
            ``(x − mean) / (std_scale · std)``.
        t1, solver, tol: inference settings used by :meth:`forward` (free phase).
        omega: relaxation factor of the odd/even sweeps, in ``[1, 2)``: each layer moves to
            ``clip(s + omega·(σ(u) − s), 0, 1)`` (projected over-relaxation) instead of
            ``σ(u)``. A fixed point of either update is a fixed point of the other, so ``omega``
            changes how fast a phase converges and, where the energy has several stationary
            points, which one the free phase reaches from the zero state; 1 is plain odd/even.
        cost: ``"cross-entropy"`` (readout outside the energy) or ``"squared-error"``
            (a linear output layer inside it; see the module docstring).

    Attributes:
        state_shapes: per-sample shape of every free layer: the hidden layers
            ``(c_l, h_l, w_l)``, then ``(K,)`` for the output layer when it is in the energy.
    """

    def __init__(self, image_shape=(3, 32, 32), num_classes=10, channels=(128, 256, 512, 512),
                 paddings=(1, 1, 1, 0), kernel_size=3, pool_size=2, mean=None, std=None,
                 std_scale=EP_STD_SCALE, t1=250, solver="sync", tol=1e-4, cost="cross-entropy", omega=1.0):
        super().__init__()
        channels, paddings = tuple(int(c) for c in channels), tuple(int(p) for p in paddings)
        if len(channels) == 0 or len(channels) != len(paddings):
            raise EpsimError(f"EP-CNN needs one padding per conv layer, got channels {channels} "
                             f"and paddings {paddings}")
        if solver not in SOLVERS:
            raise EpsimError(f"unknown EP-CNN solver {solver!r}; choose from {', '.join(SOLVERS)}")
        if cost not in COSTS:
            raise EpsimError(f"unknown EP-CNN cost {cost!r}; choose from {', '.join(COSTS)}")
        check_omega(omega, solver)
        self.cost, self.omega = cost, float(omega)
        c_in, h, w = (int(d) for d in image_shape)
        self.image_shape, self.num_classes = (c_in, h, w), int(num_classes)
        self.channels, self.paddings = channels, paddings
        self.kernel_size, self.pool_size = int(kernel_size), int(pool_size)
        self.t1, self.solver, self.tol = int(t1), solver, float(tol)
        self.std_scale = float(std_scale)
        mean = torch.full((c_in,), 0.5) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std = torch.full((c_in,), 0.5) if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean.reshape(1, c_in, 1, 1).clone())
        self.register_buffer("std", std.reshape(1, c_in, 1, 1).clone())
        self.synapses = nn.ModuleList()
        self.state_shapes = []
        for c_out, pad in zip(channels, paddings):
            self.synapses.append(nn.Conv2d(c_in, c_out, self.kernel_size, padding=pad))
            h, w = h + 2 * pad - self.kernel_size + 1, w + 2 * pad - self.kernel_size + 1
            h, w = h // self.pool_size, w // self.pool_size
            if h < 1 or w < 1:
                raise EpsimError(f"EP-CNN with channels {channels} and paddings {paddings} does not "
                                 f"fit images of shape {tuple(image_shape)}: a layer would be empty; use fewer layers or "
                                 f"more padding (e.g. --channels 32 64 --paddings 1 1 for 8x8 images)")
            self.state_shapes.append((c_out, h, w))
            c_in = c_out
        self.synapses.append(nn.Linear(c_in * h * w, self.num_classes))
        if self.output_in_energy:
            self.state_shapes.append((self.num_classes,))
        self.to(memory_format=torch.channels_last)   # NHWC convolutions are 2-3x faster on CPU

    # ----------------------------------------------------------------- basics
    @property
    def num_hidden(self) -> int:
        return len(self.channels)

    @property
    def output_in_energy(self) -> bool:
        """True when the output layer is a free layer of the energy (squared-error cost)."""
        return self.cost == "squared-error"

    def describe(self) -> dict:
        """Constructor arguments (JSON-friendly) that rebuild this architecture."""
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "channels": list(self.channels), "paddings": list(self.paddings),
                "kernel_size": self.kernel_size, "pool_size": self.pool_size,
                "std_scale": self.std_scale, "t1": self.t1, "solver": self.solver, "tol": self.tol,
                "cost": self.cost, "omega": self.omega}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` pixels in [0, 1] → network input."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise EpsimError(f"EP-CNN expects images of shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        return (x - self.mean) / (self.std_scale * self.std)

    def init_state(self, batch: int, like: torch.Tensor) -> list:
        """All-zero state of every free layer for ``batch`` samples (dtype/device of ``like``)."""
        return [_cl(torch.zeros((batch,) + s, dtype=like.dtype, device=like.device)) for s in self.state_shapes]

    def readout(self, state: list) -> torch.Tensor:
        """``(B, num_classes)`` logits: the output layer when it is in the energy, else the
        linear readout of the last hidden layer."""
        if self.output_in_energy:
            return state[-1]
        return self.synapses[-1](state[-1].flatten(1))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B,)`` cost of the logits: cross-entropy, or ``½‖logits − onehot(y)‖²``."""
        if self.output_in_energy:
            return 0.5 * (logits - F.one_hot(y, self.num_classes).to(logits.dtype)).pow(2).sum(1)
        return F.cross_entropy(logits, y, reduction="none")

    def activation(self, l: int, u: torch.Tensor) -> torch.Tensor:
        """Free layer ``l``'s fixed-point map of its drive ``u = ∂(Φ − βℓ)/∂s_l``: the hard
        sigmoid for hidden layers, ``u / 2`` for the linear output layer."""
        return 0.5 * u if l == self.num_hidden else hard_sigmoid(u)

    # --------------------------------------------------------- energy pieces
    def _conv_pool(self, l: int, inp: torch.Tensor):
        """Pre-pool conv ``conv_l(inp)`` max-pooled: ``(pooled, indices, conv output size)``."""
        z = self.synapses[l](inp)
        p, idx = F.max_pool2d(z, self.pool_size, self.pool_size, return_indices=True)
        return p, idx, z.shape[-2:]

    def _top_down(self, l: int, s_above: torch.Tensor, cache) -> torch.Tensor:
        """``∂/∂s_{l-1} ⟨P(conv_l(s_{l-1})), s_l⟩`` given the pooling indices in ``cache``."""
        _, idx, size = cache
        g = F.max_unpool2d(s_above, idx, self.pool_size, self.pool_size, output_size=size)
        return F.conv_transpose2d(g, self.synapses[l].weight, padding=self.paddings[l])

    def _nudge(self, s_top: torch.Tensor, beta: float, y: torch.Tensor) -> torch.Tensor:
        """``−β ∂ℓ/∂s_L`` for the cross-entropy readout (per sample, no batch mean)."""
        fc = self.synapses[-1]
        logits = fc(s_top.flatten(1))
        g = torch.softmax(logits, dim=1) - F.one_hot(y, self.num_classes).to(logits.dtype)
        return (-beta * (g @ fc.weight)).view_as(s_top)

    def phi(self, xn: torch.Tensor, state: list, beta: float = 0.0, y=None) -> torch.Tensor:
        """Primitive function ``Φ − β·ℓ`` per sample, ``(B,)``; ``xn`` is normalised input."""
        layers = [xn] + list(state)
        total = 0.0
        for l in range(self.num_hidden):
            p, _, _ = self._conv_pool(l, layers[l])
            total = total + (p * layers[l + 1]).flatten(1).sum(1)
        if self.output_in_energy:
            total = total + (self.synapses[-1](state[-2].flatten(1)) * state[-1]).sum(1)
        if beta != 0.0:
            total = total - beta * self.loss(self.readout(state), y)
        return total

    def phi_grad(self, xn: torch.Tensor, state: list, beta: float = 0.0, y=None) -> list:
        """``∂(Φ − βℓ)/∂s_l`` for every free layer, in closed form (list of tensors)."""
        layers = [xn] + list(state)
        caches = [self._conv_pool(l, layers[l]) for l in range(self.num_hidden)]
        return [self._drive(l, layers, caches, beta, y) for l in range(len(state))]

    def _drive(self, l, layers, caches, beta, y):
        """``∂(Φ − βℓ)/∂s_l`` of free layer ``l`` (0-based; ``layers[0]`` is the input) from
        its neighbours; ``caches[k]`` is ``_conv_pool(k, layers[k])``."""
        if l == self.num_hidden:          # the output layer (in the energy)
            fc, o = self.synapses[-1], layers[l + 1]
            u = fc(layers[l].flatten(1))
            if beta != 0.0:
                u = u - beta * (o - F.one_hot(y, self.num_classes).to(o.dtype))
            return u
        u = caches[l][0]
        if l + 1 < self.num_hidden:
            u = u + self._top_down(l + 1, layers[l + 2], caches[l + 1])
        elif self.output_in_energy:
            u = u + (layers[l + 2] @ self.synapses[-1].weight).view_as(u)
        elif beta != 0.0:
            u = u + self._nudge(layers[l + 1], beta, y)
        return u

    def _update(self, l, layers, caches, beta, y):
        """New value of free layer ``l`` given its neighbours in ``layers``: the hard sigmoid
        of its drive, or for the output layer the exact minimiser of the energy over it,
        ``(W_fc s_L + b_fc + β onehot(y)) / (2 + β)``."""
        if l == self.num_hidden:
            u = self.synapses[-1](layers[l].flatten(1))
            if beta != 0.0:
                u = u + beta * F.one_hot(y, self.num_classes).to(u.dtype)
            return u / (2.0 + beta)
        return hard_sigmoid(self._drive(l, layers, caches, beta, y))

    def _over_relax(self, l: int, s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Layer ``l`` moved ``omega`` times the way from ``s`` to its update ``target``,
        clipped to ``[0, 1]`` for a hidden layer. For ``omega ≥ 1`` this is projected
        over-relaxation ``clip(s + omega·(u/2 − s), 0, 1)``: where ``u/2`` lies outside
        ``[0, 1]``, both forms clip to the same bound."""
        moved = s + self.omega * (target - s)
        return moved if l == self.num_hidden else torch.clamp(moved, 0.0, 1.0)

    # ------------------------------------------------------------ relaxation
    def relax(self, x: torch.Tensor, y=None, beta: float = 0.0, state=None, *, solver=None,
              max_iter=None, tol=None, normalized=False) -> Relaxation:
        """Run the dynamics to (near) equilibrium.

        Args:
            x: ``(B, C, H, W)`` pixels in [0, 1] (or the normalised input if ``normalized``).
            y: ``(B,)`` labels, needed when ``beta != 0``.
            beta: nudging strength (0: free phase).
            state: initial hidden state (default: zeros).
            solver: ``"sync"`` (fixed ``max_iter`` synchronous steps) or ``"async"``
                (odd/even sweeps until the largest change ≤ ``tol``, at most ``max_iter``).
        Gradients flow through the iterations when autograd is enabled (BPTT).
        """
        solver = self.solver if solver is None else solver
        max_iter = self.t1 if max_iter is None else int(max_iter)
        tol = self.tol if tol is None else float(tol)
        if beta != 0.0 and y is None:
            raise EpsimError("a nudged phase (beta != 0) needs the labels y")
        xn = _cl(x if normalized else self.normalize(x))
        state = self.init_state(xn.shape[0], xn) if state is None else [_cl(s) for s in state]
        if solver == "sync":
            check_omega(self.omega, solver)
            return self._relax_sync(xn, state, beta, y, max_iter, tol)
        if solver == "async":
            return self._relax_async(xn, state, beta, y, max_iter, tol)
        raise EpsimError(f"unknown EP-CNN solver {solver!r}; choose from {', '.join(SOLVERS)}")

    def _relax_sync(self, xn, state, beta, y, steps, tol) -> Relaxation:
        """Synchronous loop; without autograd, each sample stops once its step moves no
        unit by more than ``tol`` (its trajectory is the full loop's, cut at convergence;
        ``tol = 0`` stops only at an exact fixed point, i.e. bit-identical to ``steps`` steps).
        With autograd recording, all ``steps`` are run so BPTT sees the full unrolled loop."""
        c0 = self._conv_pool(0, xn)                     # the input never changes
        if torch.is_grad_enabled():
            residual = torch.full((xn.shape[0],), float("inf"), dtype=xn.dtype, device=xn.device)
            for _ in range(steps):
                new = self._sync_step(xn, state, beta, y, c0)
                residual, state = _max_change(new, state), new
            return Relaxation(state, steps, residual, tol)
        stops = _SampleStops(state, steps)
        xa, ya, done_steps = xn, y, 0
        for t in range(steps):
            new = self._sync_step(xa, state, beta, ya, c0)
            res = _max_change(new, state)
            state, done_steps = new, t + 1
            keep = stops.record(state, res, done_steps, tol, last=done_steps == steps)
            if keep is None:
                continue
            if stops.done:
                break
            state = [_cl(s[keep]) for s in state]
            xa = _cl(xa[keep])
            ya = None if ya is None else ya[keep]
            c0 = (_cl(c0[0][keep]), _cl(c0[1][keep]), c0[2])
        return stops.finish(state, done_steps, tol)

    def _sync_step(self, xn, state, beta, y, c0):
        """One synchronous update ``s ← σ(∂Φ/∂s)`` of every free layer from the old state."""
        layers = [xn] + list(state)
        caches = [c0] + [self._conv_pool(l, layers[l]) for l in range(1, self.num_hidden)]
        return [self._update(l, layers, caches, beta, y) for l in range(len(state))]

    def _relax_async(self, xn, state, beta, y, max_sweeps, tol) -> Relaxation:
        """Odd/even sweeps; without autograd, each sample stops after the first sweep that moves
        none of its units by more than ``tol`` (samples are independent, so the others'
        trajectories are unchanged). With autograd recording, all samples sweep until every
        one has converged or ``max_sweeps`` is reached."""
        n = self.num_hidden
        layers = [xn] + state
        version = [0] * (len(layers))    # bumped whenever layers[i] changes
        caches, cache_version = [None] * n, [-1] * n   # conv_l(layers[l]) and the version it saw
        free = len(state)                # hidden layers, and the output layer if in the energy
        parities = (range(0, free, 2), range(1, free, 2))    # free layers 1, 3, … then 2, 4, …

        def cache(l):
            if cache_version[l] != version[l]:
                caches[l], cache_version[l] = self._conv_pool(l, layers[l]), version[l]
            return caches[l]

        lazy = _OnDemand(cache)          # a drive computes only the convolutions it reads

        per_sample = not torch.is_grad_enabled()
        stops = _SampleStops(state, max_sweeps) if per_sample else None
        res = torch.full((xn.shape[0],), float("inf"), dtype=xn.dtype, device=xn.device)
        ya, sweeps = y, 0
        while sweeps < max_sweeps:
            sweeps += 1
            change = torch.zeros(layers[0].shape[0], dtype=xn.dtype, device=xn.device)
            for group in parities:
                # Every layer of a group depends only on the other group: compute all
                # drives first (they read the current state), then write.
                drives = []
                for l in group:
                    new = self._update(l, layers, lazy, beta, ya)
                    if self.omega != 1.0:
                        new = self._over_relax(l, layers[l + 1], new)
                    drives.append((l, new))
                for l, new in drives:
                    change = torch.maximum(change, (new - layers[l + 1]).detach().abs().flatten(1).amax(1))
                    layers[l + 1] = new
                    version[l + 1] += 1
            res = change
            if not per_sample:
                if bool((res <= tol).all()):
                    break
                continue
            keep = stops.record(layers[1:], res, sweeps, tol, last=sweeps == max_sweeps)
            if keep is None:
                continue
            if stops.done:
                break
            layers = [_cl(t[keep]) for t in layers]
            ya = None if ya is None else ya[keep]
            caches = [None if c is None else (_cl(c[0][keep]), _cl(c[1][keep]), c[2]) for c in caches]
        if not per_sample:
            return Relaxation(layers[1:], sweeps, res, tol)
        return stops.finish(layers[1:], sweeps, tol)

    # ---------------------------------------------------------------- usage
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` logits after the free phase with the model's inference settings."""
        return self.readout(self.relax(x).state)

    def param_groups(self) -> list:
        """One list of parameters per synapse (conv 1…L, then the readout), for layer-wise lrs."""
        return [list(m.parameters()) for m in self.synapses]


class _OnDemand:
    """``self[k]`` is ``fn(k)``: a list whose items are computed when read."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, k):
        return self.fn(k)


def _cl(t: torch.Tensor) -> torch.Tensor:
    """Channels-last copy of a 4-D tensor (2-3x faster convolutions on CPU); other
    tensors (the ``(B, K)`` output layer) contiguous."""
    if t.dim() != 4:
        return t.contiguous()
    return t.contiguous(memory_format=torch.channels_last)


def _max_change(new: list, old: list) -> torch.Tensor:
    """``(B,)`` largest absolute change of any unit between two states."""
    per_layer = [(a - b).detach().abs().flatten(1).amax(1) for a, b in zip(new, old)]
    return torch.stack(per_layer, 1).amax(1)


class _SampleStops:
    """Per-sample stops of a relaxation run without autograd: samples are independent, so
    each converged one is written back and dropped from the working batch while the rest
    go on unchanged.

    state: the initial list of ``(B, ...)`` hidden states; cap: the step/sweep limit.
    """

    def __init__(self, state: list, cap: int):
        ref = state[0]
        n = ref.shape[0]
        self.out = [s.clone() for s in state]
        self.residual = torch.full((n,), float("inf"), dtype=ref.dtype, device=ref.device)
        self.steps = torch.full((n,), cap, dtype=torch.long, device=ref.device)
        self.active = torch.arange(n, device=ref.device)
        self.res = self.residual

    @property
    def done(self) -> bool:
        return self.active.numel() == 0

    def record(self, state: list, res: torch.Tensor, step: int, tol: float, last: bool):
        """After ``step`` steps, the working batch is ``state`` and moved by ``res`` (its
        ``(B_active,)`` largest change): retire the samples with ``res <= tol``. Returns the
        ``keep`` mask to compact the working tensors with, or None when nothing retired (or
        on the ``last`` step, which :meth:`finish` writes)."""
        self.res = res
        stop = res <= tol
        if last or not bool(stop.any()):
            return None
        idx = self.active[stop]
        for o, s in zip(self.out, state):
            o[idx] = s[stop]
        self.residual[idx], self.steps[idx] = res[stop], step
        keep = ~stop
        self.active, self.res = self.active[keep], res[keep]
        return keep

    def finish(self, state: list, step: int, tol: float) -> Relaxation:
        """The relaxation of the whole batch, the still-active samples at ``state`` after ``step``."""
        if not self.done:
            for o, s in zip(self.out, state):
                o[self.active] = s
            self.residual[self.active] = self.res
            self.steps[self.active] = step
        return Relaxation(self.out, step, self.residual, tol, self.steps)


@dataclass
class EPStep:
    """What one EP gradient estimate produced (for logging and the update mask)."""

    logits: torch.Tensor        # (B, classes) free-phase readout
    loss: torch.Tensor          # (B,) free-phase cross-entropy
    free: Relaxation
    plus: Relaxation
    minus: Relaxation
    used: torch.Tensor          # (B,) bool, samples that contributed to the gradient

    @property
    def iterations(self) -> int:
        """Steps of the three phases for the slowest sample of each."""
        return self.free.iterations + self.plus.iterations + self.minus.iterations

    @property
    def mean_sample_steps(self) -> float:
        """Steps of the three phases averaged over samples (what the batch costs)."""
        return sum(float(r.sample_steps.float().mean()) if r.sample_steps is not None else float(r.iterations)
                   for r in (self.free, self.plus, self.minus))


def ep_gradients(model: EPCNN, x, y, *, beta, t1, t2, solver=None, tol=None, nudge_tol=None,
                 require_convergence=None) -> EPStep:
    """Symmetric-nudging EP estimate of ``∇θ mean(ℓ)``, written into ``p.grad``.

    Free phase (``t1`` steps/sweeps) from zero, then ``+β`` and ``−β`` phases
    (``t2`` each) from the free fixed point; ``p.grad = −[∂Φ/∂θ(s⁺,+β) − ∂Φ/∂θ(s⁻,−β)]/(2β)``
    averaged over the samples used.

    ``tol`` stops each sample's free phase, ``nudge_tol`` (default: ``tol``) its nudged
    phases: the nudge moves the lower layers by much less than the upper ones, and a nudged
    phase stopped on the free phase's absolute tolerance leaves their response truncated.

    ``require_convergence`` (default: True for the async solver, whose stop is a
    convergence test; False for the published fixed-T sync loop) drops samples whose
    three phases did not all reach ``tol`` from the average.
    """
    solver = model.solver if solver is None else solver
    tol = model.tol if tol is None else float(tol)
    nudge_tol = tol if nudge_tol is None else float(nudge_tol)
    if require_convergence is None:
        require_convergence = solver == "async"
    xn = model.normalize(x)
    with torch.no_grad():
        free = model.relax(xn, solver=solver, max_iter=t1, tol=tol, normalized=True)
        logits = model.readout(free.state)
        loss = model.loss(logits, y)
        plus = model.relax(xn, y, beta, free.state, solver=solver, max_iter=t2, tol=nudge_tol, normalized=True)
        minus = model.relax(xn, y, -beta, free.state, solver=solver, max_iter=t2, tol=nudge_tol, normalized=True)
    used = free.converged & plus.converged & minus.converged if require_convergence \
        else torch.ones_like(free.converged)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    n_used = int(used.sum())
    if n_used:
        w = used.to(xn.dtype) / n_used
        delta = (model.phi(xn, minus.state, -beta, y) - model.phi(xn, plus.state, beta, y)) / (2 * beta)
        (delta * w).sum().backward()
    return EPStep(logits, loss, free, plus, minus, used)


def bptt_gradients(model: EPCNN, x, y, *, steps, solver="sync") -> torch.Tensor:
    """BPTT gradient of ``mean(ℓ)`` through ``steps`` free-phase steps (``"sync"``) or
    odd/even sweeps (``"async"``) from the zero state, into ``p.grad``.

    Returns the ``(B, classes)`` logits.  With enough steps for the dynamics to
    converge this is the gradient of the loss at the free fixed point that solver
    reaches, which EP with the same solver estimates (the GDU property).
    """
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    rel = model.relax(x, solver=solver, max_iter=steps, tol=0.0)
    logits = model.readout(rel.state)
    model.loss(logits, y).mean().backward()
    return logits.detach()


def build_ep_cnn(preset: dict, image_shape, num_classes, dataset_name=None) -> EPCNN:
    """EP-CNN from a resolved preset/config dict (keys ``channels``, ``paddings``, …).

    ``init_scale`` multiplies PyTorch's default initial weights and biases of every
    synapse (Laborieux et al.'s ``--scale`` option; 1 = the paper's default init);
    ``input_std_scale`` is the factor on the pixel std in the input normalisation
    (the paper's 3 keeps inputs small; 1 is the usual normalisation).
    ``init_gains`` (one per synapse) sets each synapse's initial weights to PyTorch's
    default bounds times ``2·gain`` (Scellier et al.'s layer-wise weight gains in this
    model's ``clip(u/2, 0, 1)`` convention); ``cost`` picks the readout (:data:`COSTS`).
    """
    mean = PIXEL_MEAN.get(dataset_name)
    std = PIXEL_STD.get(dataset_name)
    model = EPCNN(image_shape, num_classes, preset["channels"], preset["paddings"], mean=mean, std=std,
                  std_scale=preset.get("input_std_scale") or EP_STD_SCALE,
                  t1=preset["t1"], solver=preset["solver"], tol=preset["tol"],
                  cost=preset.get("cost") or "cross-entropy", omega=preset.get("omega") or 1.0)
    scale = preset.get("init_scale")
    gains = preset.get("init_gains")
    if gains is not None and len(gains) != len(model.synapses):
        raise EpsimError(f"init_gains needs one gain per synapse ({len(model.synapses)}: conv layers "
                         f"and readout), got {len(gains)}")
    with torch.no_grad():
        if scale is not None and scale != 1.0:
            for p in model.parameters():
                p.mul_(scale)
        if gains is not None:
            for synapse, gain in zip(model.synapses, gains):
                synapse.weight.mul_(2.0 * float(gain))
    return model
