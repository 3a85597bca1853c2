"""Small result-writing steps of the analysis driver that no project CLI offers (yet).

    python analysis/steps.py adversarial --checkpoint C --norm l2 --eps 2 --n 6 --out F.npz
    python analysis/steps.py spice-compare --checkpoint C --netlists DIR --out F.json
    python analysis/steps.py input-gradients --checkpoint C --n 50 --betas 0.1,0.01 --out F.json

Each is a thin wrapper over the library's public functions, writes one file (plus a JSON
sidecar for ``adversarial``) and prints a line; the driver ``analysis/run_all.py`` runs
them as subprocesses and records their command lines in its manifest.

* ``adversarial``: a few adversarial examples at one (large) ε with the robustness
  harness's attack (:func:`epsim.robustness.attacks.pgd`, APGD) along every gradient path
  the model offers, CE then DLR loss; an image keeps the first adversarial image that
  fools the model's own predictor (else the attack's best point). Same test images for
  every model (the robustness CLI's seeded subset).
* ``spice-compare``: for every ``sample*_*.cir`` written by ``python -m epsim.export``,
  ngspice's operating point (``-b -r``, process start included) against the numba
  solution in the matching ``.op.json``, and the time of a numba solve of the same
  circuit (one sample, JIT warm, one thread). Each netlist's row is kept in
  ``OUT.partial.json`` as it is done, so a rerun after an interruption compares only the
  netlists not done yet (a netlist rewritten since is compared again).
* ``input-gradients``: the circuit's input gradient along its paths (EP estimate from
  the input sources' currents at several nudging strengths β, BPTT through the solver's
  sweeps, implicit differentiation at the equilibrium) compared per image by cosine and
  norm ratio against the implicit one, which is itself checked against central finite
  differences of the loss along random directions.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from epsim.cli import ArgumentParser, run  # noqa: E402
from epsim.errors import EpsimError  # noqa: E402


def _test_subset(dataset_name, data_dir, n, seed):
    """The robustness CLI's image subset: the first ``n`` of a permutation seeded by ``[seed, 1]``."""
    from epsim.data import default_data_dir, load_dataset

    ds = load_dataset(dataset_name, data_dir or default_data_dir())
    n_test = len(ds.y_test)
    if n > n_test:
        raise EpsimError(f"--n {n} is larger than the {n_test} test images of {ds.name}")
    idx = np.random.default_rng([seed, 1]).permutation(n_test)[:n]
    return ds, idx, ds.x_test[idx].astype(np.float64), ds.y_test[idx]


def _write_json(path: Path, obj):
    from epsim.checkpoint import write_json

    write_json(path, obj)


# --------------------------------------------------------------------------- adversarial
def adversarial(args):
    from epsim.robustness.adapters import load_model
    from epsim.robustness.attacks import perturbation_norm, pgd

    if args.norm not in ("l2", "linf"):
        raise EpsimError("--norm must be l2 or linf")
    if not (args.eps > 0):
        raise EpsimError("--eps must be positive")
    loaded = load_model(args.checkpoint, device=args.device)
    a = loaded.adapter
    ds, idx, x, y = _test_subset(loaded.dataset or "digits", args.data_dir, args.n, args.seed)
    clean = a.predict(x)
    pred_clean = np.argmax(clean.scores, axis=1)
    x_adv = x.copy()
    broken = pred_clean != y
    broke_with = np.array(["clean" if b else "" for b in broken], dtype=object)
    t0 = time.perf_counter()
    for path in a.grad_paths:
        for loss in ("ce", "dlr"):
            todo = np.flatnonzero(~broken)
            if len(todo) == 0:
                break
            rng = np.random.default_rng([args.seed, len(path), len(loss)])
            res = pgd(lambda xx, yy: a.input_gradient(xx, yy, loss, path), a.predict, x[todo], y[todo], args.eps,
                      args.norm, args.steps, rng, restarts=1)
            x_adv[todo] = res.x_adv
            newly = ~res.robust
            broken[todo[newly]] = True
            broke_with[todo[newly]] = f"{path}/{loss}"
    adv = a.predict(x_adv)
    pred_adv = np.argmax(adv.scores, axis=1)
    norms = perturbation_norm(x_adv, x, args.norm)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(tmp, x=x.astype(np.float32), x_adv=x_adv.astype(np.float32), y=y, index=idx,
                        pred_clean=pred_clean, pred_adv=pred_adv, fooled=(pred_adv != y),
                        broke_with=broke_with.astype(str), norm=np.array(args.norm), eps=np.array(args.eps),
                        perturbation_norm=norms)
    tmp.replace(out)
    meta = {"model": a.name, "kind": a.kind, "settings": a.settings(), "checkpoint": args.checkpoint,
            "dataset": ds.name, "norm": args.norm, "eps": args.eps, "steps": args.steps, "paths": list(a.grad_paths),
            "losses": ["ce", "dlr"], "n": int(len(y)), "test_indices": idx.tolist(),
            "clean_correct": int((pred_clean == y).sum()), "fooled": int((pred_adv != y).sum()),
            "max_perturbation_norm": float(norms.max()), "wall_s": time.perf_counter() - t0,
            "adversarial_converged": bool(np.all(adv.converged)), "command": " ".join(sys.argv)}
    _write_json(out.with_suffix(".json"), meta)
    print(f"{a.name}: {meta['fooled']}/{meta['n']} fooled at {args.norm} eps={args.eps:g} -> {out}")


# --------------------------------------------------------------------------- SPICE
def _count_elements(netlist: Path) -> int:
    n = 0
    for line in netlist.read_text().splitlines():
        s = line.strip()
        if s and s[0].upper() in "RDVI" and not s.startswith("*"):
            n += 1
    return n


def spice_compare(args):
    import numba

    from epsim.circuit.compile import with_diode
    from epsim.data import default_data_dir, load_dataset
    from epsim.models.resistive import nudge_targets
    from epsim.solvers.ngspice import run_ngspice
    from epsim.solvers.numba_solver import LayeredProblem, solve
    from epsim.models.loading import load_network

    folder = Path(args.netlists)
    ops = sorted(folder.glob("sample*_*.op.json"))
    if not ops:
        raise EpsimError(f"no sample*_*.op.json in {folder}: run python -m epsim.export first")
    numba.set_num_threads(1)
    net, state = load_network(args.checkpoint)
    cfg = state.get("config", {})
    high_V = float(cfg.get("target_high_V", 1.0))
    ds = load_dataset(cfg.get("dataset", "digits"), args.data_dir or default_data_dir())
    partial_path = Path(str(args.out) + ".partial.json")
    done = (json.loads(partial_path.read_text()) if partial_path.is_file() else {}).get("rows", {})
    rows = []
    shock = None
    for op_path in ops:
        op = json.loads(op_path.read_text())
        cir = folder / op["netlists"][0]
        stamp = f"{cir.stat().st_size}:{cir.stat().st_mtime_ns}:{op_path.stat().st_mtime_ns}"
        if done.get(cir.name, {}).get("stamp") == stamp:
            rows.append(done[cir.name]["row"])
            continue
        if shock is None or shock.diode.kind != op["diode"]["kind"]:
            shock = with_diode(net, op["diode"]["kind"]) if op["diode"]["kind"] != net.diode.kind else net
        t0 = time.perf_counter()
        table = run_ngspice(cir, timeout_s=args.timeout)
        t_spice = time.perf_counter() - t0
        ref = op["node_voltages_V"]
        missing = [k for k in ref if k not in table]
        if missing:
            raise EpsimError(f"ngspice output of {cir.name} lacks nodes {missing[:3]}")
        diff = {k: abs(table[k] - v) for k, v in ref.items()}
        out_diff = max((d for k, d in diff.items() if k.startswith("out_")), default=float("nan"))
        x = ds.x_test[op["dataset_index"]:op["dataset_index"] + 1].astype(np.float64)
        problem = LayeredProblem(shock, shock.input_voltages(x))
        target = nudge_targets(shock, np.array([op["label"]]), high_V)
        solve(problem, op["beta"], target, tol_A=args.tol, max_iter=args.max_iter)  # JIT warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            eq = solve(problem, op["beta"], target, tol_A=args.tol, max_iter=args.max_iter)
            times.append(time.perf_counter() - t0)
        rows.append({"netlist": cir.name, "sample": op["sample"], "phase": op["phase"], "beta": op["beta"],
                     "diode": op["diode"]["kind"], "nodes": len(ref), "elements": _count_elements(cir),
                     "max_abs_diff_V": max(diff.values()), "max_abs_diff_out_V": out_diff,
                     "ngspice_s": t_spice, "numba_s": statistics.median(times),
                     "numba_residual_A": float(eq.certificate.max_residual_A),
                     "numba_iterations": int(eq.certificate.iterations),
                     "numba_converged": bool(eq.certificate.all_converged),
                     "op_json_residual_A": op["certificate"]["residual_A"]})
        done[cir.name] = {"stamp": stamp, "row": rows[-1]}
        _write_json(partial_path, {"rows": done})
    worst = max(r["max_abs_diff_V"] for r in rows)
    ratio = [r["ngspice_s"] / r["numba_s"] for r in rows]
    result = {"model": net.name, "checkpoint": args.checkpoint, "dataset": ds.name, "numba_tol_A": args.tol,
              "numba_threads": 1, "repeat": args.repeat, "rows": rows, "max_abs_diff_V": worst,
              "median_ngspice_s": statistics.median(r["ngspice_s"] for r in rows),
              "median_numba_s": statistics.median(r["numba_s"] for r in rows),
              "median_time_ratio": statistics.median(ratio),
              "note": "ngspice time includes process start and netlist parsing (ngspice -b -r per netlist); "
                      "numba time is one warm solve of the same single-sample circuit",
              "command": " ".join(sys.argv)}
    _write_json(Path(args.out), result)
    partial_path.unlink(missing_ok=True)
    print(f"{len(rows)} netlists: max |V_ngspice - V_numba| = {worst:.3g} V, "
          f"median ngspice/numba time ratio {result['median_time_ratio']:.0f}x -> {args.out}")


# --------------------------------------------------------------------------- gradients
def _cos_ratio(a, b):
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    cos = np.where(ok, (a * b).sum(1) / np.where(ok, na * nb, 1), np.nan)
    ratio = np.where(nb > 0, na / np.where(nb > 0, nb, 1), np.nan)
    return cos, ratio


def _stats(v):
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "median": float(np.median(v)), "mean": float(v.mean()), "min": float(v.min()),
            "p10": float(np.percentile(v, 10)), "max": float(v.max())}


def input_gradients(args):
    import torch

    from epsim.robustness.adapters import load_model
    from epsim.robustness.attacks import make_loss

    betas = [float(b) for b in args.betas.split(",") if b.strip()]
    if not betas or any(not (b > 0) for b in betas):
        raise EpsimError("--betas must be positive numbers, e.g. 0.1,0.01")
    base = load_model(args.checkpoint, grad_tol_A=args.grad_tol)
    if base.adapter.kind != "circuit":
        raise EpsimError(f"{args.checkpoint} is not a circuit model: input-gradients compares the circuit's paths")
    a = base.adapter
    ds, idx, x, y = _test_subset(base.dataset or "digits", args.data_dir, args.n, args.seed)
    t0 = time.perf_counter()
    g_imp = a.input_gradient(x, y, args.loss, "implicit").grad
    g_bptt = a.input_gradient(x, y, args.loss, "bptt").grad
    cos_b, rat_b = _cos_ratio(g_bptt, g_imp)
    out = {"model": a.name, "checkpoint": args.checkpoint, "dataset": ds.name, "n": int(len(y)), "loss": args.loss,
           "reference": "implicit", "settings": a.settings(), "test_indices": idx.tolist(),
           "bptt": {"cosine": _stats(cos_b), "norm_ratio": _stats(rat_b), "cosines": cos_b.tolist()},
           "ep": []}
    for b in betas:
        ad = load_model(args.checkpoint, grad_tol_A=args.grad_tol, ep_beta=b).adapter
        r = ad.input_gradient(x, y, args.loss, "ep")
        cos, rat = _cos_ratio(r.grad, g_imp)
        out["ep"].append({"beta": b, "cosine": _stats(cos), "norm_ratio": _stats(rat), "cosines": cos.tolist(),
                          "norm_ratios": rat.tolist(), "converged": int(np.sum(r.converged))})
    # finite differences of the loss along random unit directions, with a tight predictor
    tight = load_model(args.checkpoint, tol_A=args.fd_tol, max_iter=100000).adapter
    loss_fn = make_loss(args.loss, tight.logit_scale)
    rng = np.random.default_rng([args.seed, 7])
    m = min(args.fd_n, len(y))
    d = rng.standard_normal(x[:m].shape)
    d /= np.linalg.norm(d.reshape(m, -1), axis=1).reshape((m,) + (1,) * (x.ndim - 1))
    yt = torch.as_tensor(y[:m], dtype=torch.int64)

    def loss_at(xx):
        return loss_fn(torch.as_tensor(tight.predict(xx).scores), yt).detach().numpy()

    h = args.fd_step
    fd = (loss_at(x[:m] + h * d) - loss_at(x[:m] - h * d)) / (2 * h)
    dd = (g_imp[:m] * d).reshape(m, -1).sum(1)
    rel = np.abs(fd - dd) / np.maximum(np.abs(fd), 1e-12)
    out["finite_differences"] = {"n": int(m), "step": h, "predictor_tol_A": args.fd_tol,
                                 "directional_fd": fd.tolist(), "directional_implicit": dd.tolist(),
                                 "relative_error": _stats(rel)}
    out["wall_s"] = time.perf_counter() - t0
    out["command"] = " ".join(sys.argv)
    _write_json(Path(args.out), out)
    ep_s = ", ".join(f"β={e['beta']:g}: median cos {e['cosine'].get('median', float('nan')):.4f}" for e in out["ep"])
    print(f"{a.name}, {len(y)} images: bptt vs implicit median cos {out['bptt']['cosine'].get('median', float('nan')):.4f}; "
          f"EP vs implicit {ep_s}; implicit vs FD median rel. error "
          f"{out['finite_differences']['relative_error'].get('median', float('nan')):.2e} -> {args.out}")


# --------------------------------------------------------------------------- CLI
def build_parser():
    p = ArgumentParser(prog="python analysis/steps.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("adversarial", help="a few adversarial examples at one ε (npz + json)")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--norm", default="l2")
    a.add_argument("--eps", type=float, required=True, help="radius in [0,1]-pixel units")
    a.add_argument("--n", type=int, default=6, help="number of test images")
    a.add_argument("--steps", type=int, default=50, help="APGD iterations")
    a.add_argument("--seed", type=int, default=0, help="seed of the test subset (as the robustness CLI's)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--out", required=True, help="OUT.npz (and OUT.json)")
    s = sub.add_parser("spice-compare", help="ngspice vs numba on exported netlists (json)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--netlists", required=True, help="folder written by python -m epsim.export")
    s.add_argument("--tol", type=float, default=1e-12, help="numba KCL tolerance of the timed solves (A)")
    s.add_argument("--max-iter", type=int, default=100000)
    s.add_argument("--repeat", type=int, default=3, help="timed numba solves per netlist (median)")
    s.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds one ngspice run may take before the step fails")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--out", required=True)
    g = sub.add_parser("input-gradients", help="EP / BPTT / implicit input gradients of a circuit (json)")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--n", type=int, default=50)
    g.add_argument("--betas", default="0.1,0.01,0.001", help="nudging strengths of the EP estimate")
    g.add_argument("--loss", default="ce", choices=("ce", "dlr", "margin"))
    g.add_argument("--grad-tol", type=float, default=1e-12, help="KCL tolerance of the EP path's solves (A)")
    g.add_argument("--fd-n", type=int, default=10, help="images for the finite-difference check")
    g.add_argument("--fd-step", type=float, default=1e-4, help="finite-difference step (pixel units)")
    g.add_argument("--fd-tol", type=float, default=1e-14, help="KCL tolerance of the finite-difference solves (A)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--data-dir", default=None)
    g.add_argument("--out", required=True)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) < 1:
        raise EpsimError("--n must be at least 1")
    if not Path(args.checkpoint).is_file():
        raise EpsimError(f"checkpoint {args.checkpoint} not found")
    {"adversarial": adversarial, "spice-compare": spice_compare, "input-gradients": input_gradients}[args.step](args)


if __name__ == "__main__":
    sys.exit(run(main))
