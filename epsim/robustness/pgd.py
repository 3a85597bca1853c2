"""Projected gradient descent (PGD) attacks in [0, 1] pixel space, L2 or L∞.

``x_adv = clip(x + δ, 0, 1)`` with ``‖δ‖ ≤ ε``: each step moves ``δ`` along the
(normalised, for L2; signed, for L∞) gradient of the loss, projects it onto the
ε-ball, then clips the image to [0, 1].  Clipping moves every pixel toward the clean
image, so the result stays inside the ball.  Used for adversarial training (AdvCNN)
and as the basic white-box attack of the robustness harness.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import EpsimError

NORMS = ("l2", "linf")


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 1, 1)`` L2 norm of each sample of ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project each sample of ``delta`` ``(B, …)`` onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta)
    return delta * torch.clamp(eps / n, max=1.0)


def _generator(rng, device):
    if rng is None or isinstance(rng, torch.Generator):
        return rng
    g = torch.Generator(device=device)
    g.manual_seed(int(rng))
    return g


def random_start(x: torch.Tensor, eps: float, norm: str, rng=None) -> torch.Tensor:
    """A random ``δ`` in the ε-ball: uniform per pixel (L∞) or uniform in the ball (L2)."""
    g = _generator(rng, x.device)
    if norm == "linf":
        return (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    d = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    d = d / _per_sample_norm(d)
    dim = x[0].numel()
    r = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=g, device=x.device, dtype=x.dtype) ** (1 / dim)
    return d * r * eps


def pgd(model_fn, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", steps: int = 10,
        step_size: float | None = None, rng=None, *, random_init: bool = True, loss_fn=None) -> torch.Tensor:
    """Untargeted PGD maximising ``loss_fn(model_fn(x_adv), y)``; returns ``x_adv``.

    Args:
        model_fn: callable ``(B, C, H, W)`` pixels → ``(B, classes)`` logits, differentiable.
        x: clean images in [0, 1]. y: ``(B,)`` labels.
        eps: radius of the ball (in [0, 1] pixel units). norm: ``"l2"`` or ``"linf"``.
        steps: gradient steps (0: only the random start, if any).
        step_size: per-step move; default ``2.5 · eps / steps`` (Madry et al.).
        rng: ``torch.Generator``, an int seed or None, for the random start.
        random_init: start from a random point of the ball (else from ``x``).
        loss_fn: ``(logits, y) → scalar`` to maximise; default summed cross-entropy.
    Returns:
        ``(B, C, H, W)`` adversarial images, detached, inside the ε-ball and in [0, 1].
    """
    if norm not in NORMS:
        raise EpsimError(f"unknown attack norm {norm!r}; choose from {', '.join(NORMS)}")
    if not (math.isfinite(eps) and eps >= 0):
        raise EpsimError(f"attack radius eps must be a non-negative number, got {eps}")
    if steps < 0:
        raise EpsimError(f"attack steps must be non-negative, got {steps}")
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1)
    loss_fn = loss_fn or (lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum"))
    x = x.detach()
    delta = random_start(x, eps, norm, rng) if random_init and eps > 0 else torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model_fn(x + delta), y)
            grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "linf":
                step = step_size * grad.sign()
            else:
                step = step_size * grad / _per_sample_norm(grad)
            delta = project(delta.detach() + step, eps, norm)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).clamp(0, 1).detach()
