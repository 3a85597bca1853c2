"""Every CLI checks where its results go before it loads data or computes anything (issue 17)."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from epsim import data as data_mod
from epsim.cli import prepare_out_dir, prepare_out_file
from epsim.errors import EpsimError

REPO = Path(__file__).resolve().parents[1]


def _no_compute(*args, **kwargs):
    raise AssertionError("compute started before the output location was checked")


@pytest.fixture
def guarded(monkeypatch):
    """Loading a dataset or a model fails the test: the CLI must stop before that."""
    import epsim.robustness.cli as robustness_cli
    import epsim.train as train_cli

    monkeypatch.setattr(data_mod, "load_dataset", _no_compute)
    monkeypatch.setattr(train_cli, "load_dataset", _no_compute)
    monkeypatch.setattr(robustness_cli, "load_model", _no_compute)


def _train(out):
    from epsim.train import main

    main(["--out", str(out), "--no-progress", "--epochs", "1"])


def _train_torch(out):
    from epsim.train import main

    main(["--model", "bp-cnn", "--dataset", "digits", "--out", str(out), "--no-progress", "--epochs", "1"])


def _robustness(out, tmp_path):
    from epsim.robustness.cli import main

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"any file: the output is checked before the checkpoint is read")
    main(["--checkpoint", str(ckpt), "--attack", "pgd-l2", "--eps", "0.5", "--out", str(out)])


def _export(out):
    from epsim.export import main

    main(["--reference", "--out", str(out)])


def _device_sweep(out):
    from epsim.device_sweep import main

    main(["--out", str(out), "--epochs", "1", "--no-progress"])


RUNNERS = {
    "train": lambda out, tmp: _train(out),
    "train-torch": lambda out, tmp: _train_torch(out),
    "robustness": _robustness,
    "export": lambda out, tmp: _export(out),
    "device_sweep": lambda out, tmp: _device_sweep(out / "sweep.json" if out.is_dir() else out),
}


def _bad_outputs(tmp_path):
    """``(case, path)``: an existing file as --out, and an --out below a file."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return [("file", a_file), ("parent is a file", a_file / "run")]


@pytest.mark.parametrize("cli", sorted(RUNNERS))
def test_unusable_out_fails_before_any_compute(cli, tmp_path, guarded):
    for case, out in _bad_outputs(tmp_path):
        if cli == "device_sweep" and case == "file":
            continue  # device_sweep's --out is a file: see test_device_sweep_out_folder_is_refused
        with pytest.raises(EpsimError, match="--out") as exc:
            RUNNERS[cli](out, tmp_path)
        assert "\n" not in str(exc.value), case


def test_device_sweep_out_folder_is_refused(tmp_path, guarded):
    from epsim.device_sweep import main

    with pytest.raises(EpsimError, match="is a folder"):
        main(["--out", str(tmp_path), "--epochs", "1"])
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(EpsimError, match="--runs-dir"):
        main(["--out", str(tmp_path / "sweep.json"), "--runs-dir", str(tmp_path / "runs")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
@pytest.mark.parametrize("cli", sorted(RUNNERS))
def test_read_only_parent_fails_before_any_compute(cli, tmp_path, guarded):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        with pytest.raises(EpsimError, match="cannot (create|write)"):
            RUNNERS[cli](parent / "run", tmp_path)
    finally:
        parent.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_existing_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(EpsimError, match="cannot write"):
            prepare_out_dir(out)
    finally:
        out.chmod(0o700)


def test_prepare_out_creates_folders_and_leaves_no_probe(tmp_path):
    out = prepare_out_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []
    assert prepare_out_file(tmp_path / "c" / "x.json") == tmp_path / "c" / "x.json"
    assert (tmp_path / "c").is_dir() and list((tmp_path / "c").iterdir()) == []


def test_train_cli_exits_2_at_once_on_a_file_as_out(tmp_path):
    out = tmp_path / "a_file"
    out.write_text("x")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "epsim.train", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out") and "Traceback" not in r.stderr
    assert "training" not in r.stdout
