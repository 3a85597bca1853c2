"""One small interface between the robustness harness and every kind of model.

An adapter exposes, for images ``x`` (B, C, H, W) with pixels in [0, 1] (numpy float64):

* ``predict(x) -> Prediction``: the model's actual predictor with its inference settings
  — scores (B, K), per-sample convergence certificate. Black-box attacks query exactly this.
* ``input_gradient(x, y, loss, path) -> GradientResult``: ``dL/dx`` (B, C, H, W) of a loss
  of the scores (``loss`` is a name from :data:`epsim.robustness.attacks.LOSSES`) along one
  gradient ``path`` from ``grad_paths``.
* ``settings()``: the inference settings (JSON-able), written next to every number.

:class:`CircuitAdapter` wraps a :class:`~epsim.models.resistive.ResistiveNetwork`; its
predictor is the equilibrium solver of the chosen backend (numba, torch or spice) with the
tolerance and sweep budget it was trained with, and its scores are the output node
voltages (V). Gradient paths:

* ``bptt``: autograd through the torch solver's block sweeps from 0 V
  (:func:`epsim.solvers.torch_solver.sweep_to_tolerance`), unrolled with the **predictor's
  own stopping rule**: each sample stops once its KCL residual is within the predictor's
  ``tol_A`` (at most its ``max_iter`` sweeps) while the others go on, so the horizon is the
  one used for prediction, sample by sample, not a truncated one.
* ``implicit``: implicit differentiation of KCL at the predictor's equilibrium
  (:func:`epsim.robustness.input_gradients.implicit_input_gradient`, reusing the equilibrium
  the predictor just computed for these very images when there is one).
* ``ep``: the EP estimate read from the input sources' currents in the ``±beta`` nudged
  phases (:func:`epsim.robustness.input_gradients.ep_input_gradient`), solved by the
  predictor's backend with a tight tolerance (``grad_tol_A``: with the prediction
  tolerance a small nudge can leave the warm-started state within tolerance, i.e. zero
  gradient); on numba and torch the nudged phases are solved as their changes from the free
  state to ``EP_NUDGE_RTOL`` of their responses, which keeps the first layer's response
  exact where it is far below its voltages (deep amplified circuits). That estimator measures the gradient of the squared error to a target; for
  an arbitrary loss ``L(v_out)`` the target is set to ``v_free − ∂L/∂v_out / s`` (``s`` the
  per-sample max-norm of ``∂L/∂v_out``, which keeps the nudge small), so that the
  nudging cost's gradient at the free state is ``∂L/∂v_out / s`` and the estimate,
  multiplied back by ``s``, is ``dL/dx`` (exact to first order in ``beta``).

:class:`TorchAdapter` wraps any ``torch.nn.Module`` mapping [0, 1] images to logits
(software EP-CNN, BP-CNN, AdvCNN, ViT, …); its one path ``bptt`` is autograd through the
module's forward pass (for a feed-forward network that is ordinary backpropagation; for
the software EP-CNN it is BPTT through its relaxation, all T1 steps). An EP-CNN's
relaxation certificate (largest change in the last step ≤ tol) is reported as its
convergence; since its inference is defined as T1 steps (as published), the prediction of
an unconverged sample is still used, and the ``converged`` sanity check reports it.

The ``transfer`` path (gradients of a surrogate model, judged by the target's predictor)
is built by :func:`transfer_gradient` from another adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import EpsimError
from .attacks import make_loss

PATHS = ("bptt", "implicit", "ep", "transfer")
EP_NUDGE_RTOL = 1e-6  # the EP path's nudged phases: error per layer / its response


@dataclass
class Prediction:
    """Output of a model's predictor on a batch.

    scores:     (B, K) output voltages (V) for circuits, logits for software models.
    converged:  (B,) bool convergence certificate (all True for feed-forward models).
    residual:   (B,) KCL residual (A) for circuits, last-step change for the EP-CNN, or None.
    iterations: sweeps/steps used (max over the batch), or 0.
    use_unconverged: the prediction of an unconverged sample is still the model's prediction
                (software EP-CNN: inference is "T1 steps", as in the published model); for a
                circuit it is not (an unconverged solve is a simulation failure and counts
                as a misclassification). Unconverged samples are counted either way.
    """

    scores: np.ndarray
    converged: np.ndarray
    residual: np.ndarray | None = None
    iterations: int = 0
    use_unconverged: bool = False

    @property
    def usable(self) -> np.ndarray:
        """(B,) bool: predictions that may count as correct (converged, unless the model's
        inference is defined by a fixed number of steps, see ``use_unconverged``)."""
        conv = np.asarray(self.converged, bool)
        return np.ones_like(conv) if self.use_unconverged else conv


@dataclass
class GradientResult:
    """``dL/dx`` from one gradient path.

    grad:      (B, C, H, W) gradient of the per-sample loss w.r.t. the [0, 1] pixels.
    loss:      (B,) loss values at ``x`` as seen by that path.
    converged: (B,) the equilibria behind the gradient met their tolerance (True if n/a).
    path:      the path's name.
    """

    grad: np.ndarray
    loss: np.ndarray
    converged: np.ndarray
    path: str


def _labels_tensor(y, device="cpu"):
    return torch.as_tensor(np.asarray(y, dtype=np.int64), device=device)


class CircuitAdapter:
    """Robustness interface of a resistive circuit (see the module docstring).

    Args:
        net: the :class:`ResistiveNetwork`.
        backend: predictor backend ``numba`` | ``torch`` | ``spice``.
        tol_A, max_iter: the predictor's KCL tolerance (A) and sweep budget.
        grad_tol_A: KCL tolerance of the EP path's solves (A).
        ep_beta: nudging strength of the EP path (dimensionless, as in training).
        ce_temperature_V: ``T`` of the cross-entropy on voltages, ``softmax(v_out / T)``.
        device: torch device of the ``bptt``/``implicit`` computations.
        batch_size: images per predictor call.
        name: label in result tables.
    """

    kind = "circuit"
    score_unit = "V"
    has_equilibrium = True
    grad_paths = ("bptt", "implicit", "ep")

    def __init__(self, net, *, backend="numba", tol_A=1e-9, max_iter=1000, grad_tol_A=1e-12,
                 ep_beta=0.01, ce_temperature_V=1.0, device="cpu", batch_size=500, name="circuit"):
        from ..solvers import get_solver
        from ..solvers.torch_solver import TorchCircuit

        if not (np.isfinite(ce_temperature_V) and ce_temperature_V > 0):
            raise EpsimError("--ce-temperature must be a positive voltage")
        if not (np.isfinite(ep_beta) and ep_beta > 0):
            raise EpsimError("--ep-beta must be a positive number")
        if not (tol_A > 0 and grad_tol_A > 0 and max_iter >= 1):
            raise EpsimError("tolerances must be positive (A) and --max-iter at least 1")
        if backend == "spice" and net.diode.kind != "shockley":
            raise EpsimError("the spice backend needs Shockley clamp diodes (SPICE has no ideal diode) and this "
                             "circuit has ideal ones: use --backend numba or torch, or a model trained with "
                             "--diode shockley")
        self.net = net
        self.name = name
        self.backend = backend
        self.tol_A, self.max_iter = float(tol_A), int(max_iter)
        self.grad_tol_A, self.ep_beta = float(grad_tol_A), float(ep_beta)
        self.ce_temperature_V = float(ce_temperature_V)
        self.batch_size = int(batch_size)
        opts = {"device": device} if backend == "torch" else {}
        self.solver = get_solver(backend, tol_A=self.tol_A, max_iter=self.max_iter, **opts)
        if backend in ("numba", "torch"):  # nudged phases solved as changes: exact however deep
            opts["nudge_rtol"] = EP_NUDGE_RTOL
        self.grad_solver = get_solver(backend, tol_A=self.grad_tol_A,
                                      max_iter=max(self.max_iter, 5000), **opts)
        self.circuit = TorchCircuit(net, device, "float64")
        self._last = None  # (x, Equilibrium) of the last single-batch prediction

    # ---- basics ------------------------------------------------------------------------
    @property
    def image_shape(self):
        return self.net.image_shape

    @property
    def num_classes(self):
        return self.net.num_outputs

    @property
    def logit_scale(self):
        return 1.0 / self.ce_temperature_V

    def settings(self) -> dict:
        return {"model": self.name, "kind": self.kind, "backend": self.backend, "tol_A": self.tol_A,
                "max_iter": self.max_iter, "diode": self.net.diode.kind,
                "input_gain_V": self.net.input_gain_V, "input_center": self.net.input_center, "scores": "output node voltages (V)",
                "ce": f"softmax cross-entropy of v_out / {self.ce_temperature_V:g} V",
                "grad_tol_A": self.grad_tol_A, "ep_beta": self.ep_beta}

    # ---- predictor ---------------------------------------------------------------------
    def predict(self, x) -> Prediction:
        """Free equilibrium of ``x`` with the predictor's backend and settings."""
        x = np.asarray(x, np.float64)
        scores, conv, res, iters = [], [], [], 0
        for i in range(0, len(x), self.batch_size):
            xb = x[i:i + self.batch_size]
            eq = self.solver.solve(self.solver.prepare(self.net, self.net.input_voltages(xb)), 0.0)
            scores.append(eq.v_output)
            conv.append(eq.certificate.converged)
            res.append(eq.certificate.residual_A)
            iters = max(iters, int(eq.certificate.iterations))
            if len(x) <= self.batch_size:
                self._last = (x.copy(), eq)
        return Prediction(np.concatenate(scores), np.concatenate(conv), np.concatenate(res), iters)

    # ---- gradients ---------------------------------------------------------------------
    def input_gradient(self, x, y, loss, path) -> GradientResult:
        """``dL/dx`` (B, C, H, W) of loss ``loss`` (name) along ``path`` (see the module docstring)."""
        if path not in self.grad_paths:
            raise EpsimError(f"gradient path {path!r} is not available for a circuit; "
                             f"choose from {', '.join(self.grad_paths)}")
        x = np.asarray(x, np.float64)
        yt = _labels_tensor(y, self.circuit.device)
        loss_fn = make_loss(loss, self.logit_scale)
        if path == "bptt":
            return self._bptt(x, yt, loss_fn)
        if path == "implicit":
            return self._implicit(x, yt, loss_fn)
        return self._ep(x, y, yt, loss_fn)

    def unrolled_gradient(self, x, y, loss, n_steps) -> GradientResult:
        """``dL/dx`` by backprop through ``n_steps`` sweeps from 0 V, whatever state they
        reach (the seed's truncated-unroll gradient; path ``unroll-N``)."""
        from .input_gradients import circuit_forward

        x = np.asarray(x, np.float64)
        c = self.circuit
        yt = _labels_tensor(y, c.device)
        loss_fn = make_loss(loss, self.logit_scale)
        xt = torch.as_tensor(x, dtype=c.dtype, device=c.device).requires_grad_(True)
        with torch.enable_grad():
            per = loss_fn(circuit_forward(c, xt, int(n_steps)), yt)
            (g,) = torch.autograd.grad(per.sum(), xt)
        return GradientResult(g.detach().cpu().numpy(), per.detach().cpu().numpy(), np.ones(len(x), bool),
                              f"unroll-{int(n_steps)}")

    def _bptt(self, x, yt, loss_fn) -> GradientResult:
        """Backprop through the torch solver's own sweeps from 0 V, each sample stopped by the
        predictor's rule (its KCL residual within ``tol_A``, at most ``max_iter`` sweeps)."""
        from ..solvers.torch_solver import sweep_to_tolerance

        c = self.circuit
        xt = torch.as_tensor(x, dtype=c.dtype, device=c.device).requires_grad_(True)
        tol_n = self.tol_A / c.g_unit_S
        with torch.enable_grad():
            drive = c.drive_out(0, c.input_voltages(xt))
            a = [c.self_conductance(l, 0.0) for l in range(1, c.L + 1)]
            v, _ = sweep_to_tolerance(c, a, c.zeros_state(len(x)), drive, 0.0, None, tol_n, self.max_iter)
            per = loss_fn(c.output_voltages(v), yt)
            # outputs stopped before the input reached them do not depend on it: zero gradient
            (g,) = torch.autograd.grad(per.sum(), xt) if per.requires_grad else (torch.zeros_like(xt),)
        with torch.no_grad():
            res = c.residual([s.detach() for s in v], drive.detach())
        return GradientResult(g.detach().cpu().numpy(), per.detach().cpu().numpy(),
                              (res <= tol_n).cpu().numpy(), "bptt")

    def _implicit(self, x, yt, loss_fn) -> GradientResult:
        from .input_gradients import implicit_input_gradient

        eq = None
        if self._last is not None and self._last[0].shape == x.shape and np.array_equal(self._last[0], x):
            eq = self._last[1]
        r = implicit_input_gradient(self.circuit, x, lambda v: loss_fn(v, yt), tol_A=self.tol_A,
                                    max_iter=self.max_iter, strict=False, equilibrium=eq)
        return GradientResult(np.asarray(r.grad_x), r.loss, r.converged, "implicit")

    def _ep(self, x, y, yt, loss_fn) -> GradientResult:
        from .input_gradients import ep_input_gradient

        init = None  # warm start from the predictor's equilibrium of these images, when it has one
        if self._last is not None and self._last[0].shape == x.shape and np.array_equal(self._last[0], x):
            init = self._last[1].v_free
        free = self.grad_solver.solve(self.grad_solver.prepare(self.net, self.net.input_voltages(x)), 0.0,
                                      init=init)
        v = torch.as_tensor(free.v_output, dtype=torch.float64).requires_grad_(True)
        with torch.enable_grad():
            per = loss_fn(v, yt)
            (g_out,) = torch.autograd.grad(per.sum(), v)
        g_out = g_out.numpy()
        scale = np.abs(g_out).max(axis=1)
        safe = np.where(scale > 0, scale, 1.0)
        target = free.v_output - g_out / safe[:, None]
        r = ep_input_gradient(self.net, self.grad_solver, x, target, self.ep_beta, strict=False, free=free)
        grad = np.asarray(r.grad_x) * scale.reshape((-1,) + (1,) * (x.ndim - 1))
        return GradientResult(grad, per.detach().numpy(), r.converged & free.certificate.converged, "ep")


class TorchAdapter:
    """Robustness interface of a software model (``nn.Module``: [0, 1] images -> logits).

    Args:
        model: the module (put in eval mode here).
        image_shape: (C, H, W); num_classes: K.
        device: torch device; batch_size: images per forward pass; name: table label.
    """

    kind = "torch"
    score_unit = "logit"
    grad_paths = ("bptt",)
    logit_scale = 1.0

    def __init__(self, model, image_shape, num_classes, *, device="cpu", batch_size=256, name="torch"):
        self.model = model.to(device).eval()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.name = name
        p = next(iter(model.parameters()), None)
        self.dtype = p.dtype if p is not None else torch.float32
        self.relaxes = hasattr(model, "relax") and hasattr(model, "readout")
        self.has_equilibrium = self.relaxes

    def settings(self) -> dict:
        s = {"model": self.name, "kind": self.kind, "backend": "torch", "device": str(self.device),
             "dtype": str(self.dtype).replace("torch.", ""), "scores": "logits",
             "ce": "softmax cross-entropy of the logits"}
        for key in ("t1", "solver", "tol"):
            if hasattr(self.model, key):
                s[f"inference_{key}"] = getattr(self.model, key)
        return s

    def _tensor(self, x):
        return torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)

    def predict(self, x) -> Prediction:
        x = np.asarray(x, np.float64)
        out, conv, res, iters = [], [], [], 0
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = self._tensor(x[i:i + self.batch_size])
                if self.relaxes:
                    rel = self.model.relax(xb)
                    out.append(self.model.readout(rel.state).double().cpu().numpy())
                    conv.append(rel.converged.cpu().numpy())
                    res.append(rel.residual.double().cpu().numpy())
                    iters = max(iters, int(rel.iterations))
                else:
                    out.append(self.model(xb).double().cpu().numpy())
                    conv.append(np.ones(len(xb), bool))
        return Prediction(np.concatenate(out), np.concatenate(conv),
                          np.concatenate(res) if res else None, iters, use_unconverged=self.relaxes)

    def input_gradient(self, x, y, loss, path) -> GradientResult:
        if path not in self.grad_paths:
            raise EpsimError(f"gradient path {path!r} is not available for software model {self.name}; "
                             f"choose from {', '.join(self.grad_paths)}")
        return self._batched_gradient(x, y, loss, self.model, path)

    def unrolled_gradient(self, x, y, loss, n_steps) -> GradientResult:
        """``dL/dx`` through ``n_steps`` steps of an EP model's own dynamics (synchronous steps,
        or odd/even sweeps for a model whose solver is ``async``) from the zero state (the seed's
        truncated unroll); a feed-forward model's ordinary gradient."""
        if not self.relaxes:
            return self.input_gradient(x, y, loss, "bptt")

        def unrolled(xb):
            rel = self.model.relax(xb, max_iter=int(n_steps), tol=0.0)
            return self.model.readout(rel.state)

        return self._batched_gradient(x, y, loss, unrolled, f"unroll-{int(n_steps)}")

    def _batched_gradient(self, x, y, loss, scores_fn, path) -> GradientResult:
        """``dL/dx`` of ``loss`` on ``scores_fn(x)`` (logits), batch by batch."""
        loss_fn = make_loss(loss, 1.0)
        grads, losses = [], []
        for i in range(0, len(x), self.batch_size):
            xb = self._tensor(x[i:i + self.batch_size]).requires_grad_(True)
            yb = _labels_tensor(y[i:i + self.batch_size], self.device)
            with torch.enable_grad():
                per = loss_fn(scores_fn(xb).double(), yb)
                (g,) = torch.autograd.grad(per.sum(), xb)
            grads.append(g.double().cpu().numpy())
            losses.append(per.detach().cpu().numpy())
        return GradientResult(np.concatenate(grads), np.concatenate(losses), np.ones(len(x), bool), path)


def transfer_gradient(surrogate, loss):
    """``grad_fn(x, y)`` returning the surrogate's gradient (its first path) as path ``transfer``."""
    path = surrogate.grad_paths[0]

    def grad_fn(x, y):
        r = surrogate.input_gradient(x, y, loss, path)
        return GradientResult(r.grad, r.loss, r.converged, "transfer")

    return grad_fn


# ---- loading from checkpoints ----------------------------------------------------------
@dataclass
class LoadedModel:
    """An adapter plus what its checkpoint says about how it was trained.

    dataset: dataset name the model was trained on (or None if unknown);
    train_config: the checkpoint's config dict; recorded: {"test_accuracy", "test_subset",
    "backend", "tol_A", "max_iter"} as recorded at the end of training (values may be None).
    """

    adapter: object
    dataset: str | None
    train_config: dict
    recorded: dict


def load_model(path, *, backend=None, tol_A=None, max_iter=None, device="cpu", **circuit_options) -> LoadedModel:
    """Adapter for checkpoint ``path``: circuit checkpoints (``kind: circuit``) or software models.

    backend/tol_A/max_iter: predictor settings of a circuit (default: those it was trained with);
        max_iter also sets a software EP model's inference relaxation budget (its ``t1``: steps,
        or sweeps of the odd/even solver), which its BPTT gradients then run through.
    circuit_options: passed to :class:`CircuitAdapter` (grad_tol_A, ep_beta, ce_temperature_V, …).
    The file is read once, by :func:`epsim.models.loading.load_trained`.
    """
    from ..models.loading import load_trained

    path = Path(path)
    trained = load_trained(path)
    cfg, kind = trained.config, trained.kind
    hist = trained.state.get("history") or [{}]
    last = (hist[-1] or {}) if isinstance(hist, list) else {}
    if trained.is_circuit:
        net = trained.model
        recorded = {"test_accuracy": last.get("test_accuracy"), "test_subset": cfg.get("test_subset"),
                    "backend": cfg.get("backend"), "tol_A": cfg.get("tol_A"), "max_iter": cfg.get("max_iter")}
        adapter = CircuitAdapter(
            net, backend=backend or cfg.get("backend", "numba"),
            tol_A=cfg.get("tol_A", 1e-9) if tol_A is None else tol_A,
            max_iter=cfg.get("max_iter", 1000) if max_iter is None else max_iter,
            device=device, name=f"circuit-{cfg.get('model', net.name)}", **circuit_options)
        return LoadedModel(adapter, trained.dataset, cfg, recorded)
    model, ckpt, dataset = trained.model, trained.state, trained.dataset
    image_shape = getattr(model, "image_shape", None) or cfg.get("image_shape") or ckpt.get("image_shape")
    num_classes = getattr(model, "num_classes", None) or cfg.get("num_classes") or ckpt.get("num_classes")
    if image_shape is None or num_classes is None:
        from ..data import load_dataset

        if dataset is None:
            raise EpsimError(f"{path}: cannot tell the image shape of this {kind!r} model")
        ds = load_dataset(dataset, test_subset=1) if dataset == "digits" else None
        if ds is None:
            raise EpsimError(f"{path}: cannot tell the image shape of this {kind!r} model")
        image_shape, num_classes = ds.image_shape, ds.num_classes
    name = cfg.get("model") or kind or "torch"
    if max_iter is not None:
        if not (hasattr(model, "relax") and hasattr(model, "t1")):
            raise EpsimError(f"{path} holds a feed-forward {name}: a relaxation budget (--max-iter) applies "
                             "to circuits and EP models only")
        model.t1 = int(max_iter)  # the free phase of every prediction and BPTT gradient
    recorded = {"test_accuracy": last.get("test_accuracy"),
                "test_subset": cfg.get("test_subset"), "backend": "torch", "tol_A": None, "max_iter": None}
    return LoadedModel(TorchAdapter(model, image_shape, num_classes, device=device, name=str(name)),
                       dataset, cfg, recorded)
