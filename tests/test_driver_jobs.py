"""analysis/run_all.py --jobs: steps run concurrently in plan order, each after the steps it needs."""
import json
import sys
from pathlib import Path

import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
sys.path.insert(0, str(ANALYSIS))

from driver.manifest import UserError, load_manifest  # noqa: E402
from driver.plan import Step  # noqa: E402
from driver.runner import execute, step_environment  # noqa: E402

# a step: sleep, then write its start and end times (s since the epoch) as its output; exit 1 on "fail"
SCRIPT = ("import json, sys, time; t0 = time.time(); time.sleep(float(sys.argv[2])); "
          "sys.exit(1) if sys.argv[3] == 'fail' else "
          "open(sys.argv[1], 'w').write(json.dumps([t0, time.time()]))")


def _step(out, name, seconds=0.6, deps=(), fail=False):
    path = f"{name}.json"
    return Step(name=name, kind="train", argv=["-c", SCRIPT, str(out / path), str(seconds), "fail" if fail else "ok"],
                outputs=[path], deps=list(deps))


def _plan(out):
    return [_step(out, "a"), _step(out, "b"), _step(out, "c", 0.1, deps=["a"]), _step(out, "d", 0.1, fail=True),
            _step(out, "e", 0.1, deps=["d"]), _step(out, "f", 0.1, deps=["a", "b"])]


def _interval(out, name):
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.parametrize("jobs", [1, 2])
def test_jobs_run_steps_after_their_dependencies(tmp_path, jobs):
    lines = []
    manifest = execute(_plan(tmp_path), tmp_path, "smoke", jobs=jobs, log=lines.append)
    states = {k: v["status"] for k, v in manifest["steps"].items()}
    assert states == {"a": "done", "b": "done", "c": "done", "d": "failed", "e": "blocked", "f": "done"}
    assert load_manifest(tmp_path)["steps"]["e"]["error"] == "needs d"
    a, b, c, f = (_interval(tmp_path, n) for n in "abcf")
    assert c[0] >= a[1] and f[0] >= max(a[1], b[1])  # dependencies finished first
    overlap = min(a[1], b[1]) - max(a[0], b[0])
    if jobs == 1:
        assert overlap < 0  # one at a time, in plan order
        assert b[0] >= a[1] and c[0] >= b[1]
    else:
        assert overlap > 0.3  # a and b ran side by side
    assert any("] d: failed in " in line for line in lines) and any("] e: blocked by d" in line for line in lines)
    assert all(line.startswith("[") for line in lines)  # every line names its time and its step


def test_a_rerun_skips_what_is_done_and_retries_the_failed(tmp_path):
    execute(_plan(tmp_path), tmp_path, "smoke", jobs=2, log=lambda *a: None)
    first = _interval(tmp_path, "a")
    lines = []
    plan = _plan(tmp_path)
    plan[3] = _step(tmp_path, "d", 0.1)  # fixed
    manifest = execute(plan, tmp_path, "smoke", jobs=2, log=lines.append)
    assert all(v["status"] == "done" for v in manifest["steps"].values())
    assert _interval(tmp_path, "a") == first and any(line.endswith("a: done earlier, skipped") for line in lines)


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(UserError, match="--jobs"):
        execute(_plan(tmp_path), tmp_path, "smoke", jobs=0)


def test_thread_share_per_job(monkeypatch):
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    env = step_environment(4)
    assert env["NUMBA_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "2"
    assert "NUMBA_NUM_THREADS" not in step_environment(1)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    assert step_environment(4)["NUMBA_NUM_THREADS"] == "3"  # the user's setting wins
