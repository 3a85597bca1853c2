"""One name per concept across the commands: help on every option, defaults shown once, the shared
names wherever the concept exists, deprecated aliases that warn and land in the same place, one
list syntax, and every --help runs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from epsim import device_sweep, energy, export, gradcheck, train
from epsim.cli import deprecated_aliases
from epsim.robustness import cli as robustness

REPO = Path(__file__).resolve().parents[1]

# command -> (build_parser, the smallest valid command line)
COMMANDS = {
    "epsim.train": (train.build_parser, []),
    "epsim.export": (export.build_parser, ["--reference", "--out", "o"]),
    "epsim.robustness": (robustness.build_parser, ["--checkpoint", "c.pt", "--attack", "pgd-l2", "--out", "o"]),
    "epsim.device_sweep": (device_sweep.build_parser, ["--out", "s.json"]),
    "epsim.gradcheck": (gradcheck.build_parser, []),
    "epsim.energy": (energy.build_parser, ["--checkpoint", "c.pt", "--out", "o"]),
}
# shared option -> (a value, the commands where the concept exists)
SHARED = {
    "--test-subset": ("5", ("epsim.train", "epsim.export", "epsim.robustness", "epsim.device_sweep", "epsim.energy")),
    "--attack-subset": ("7", ("epsim.device_sweep", "epsim.energy")),
    "--threads": ("1", tuple(COMMANDS)),
    "--device": ("cpu", ("epsim.train", "epsim.robustness")),
    "--dataset": ("digits", ("epsim.train", "epsim.robustness", "epsim.device_sweep", "epsim.gradcheck")),
    "--data-dir": ("d", tuple(COMMANDS)),
    "--seed": ("3", ("epsim.train", "epsim.robustness", "epsim.device_sweep", "epsim.gradcheck")),
    "--out": ("elsewhere", ("epsim.train", "epsim.export", "epsim.robustness", "epsim.device_sweep", "epsim.energy")),
    "--batch-size": ("4", ("epsim.train", "epsim.robustness", "epsim.gradcheck", "epsim.energy")),
}
OLD_NAMES = {  # command -> the deprecated aliases it must keep for one release
    "epsim.train": {"--torch-threads": "--threads"},
    "epsim.export": {"--samples": "--test-subset"},
    "epsim.robustness": {"--n": "--test-subset"},
    "epsim.device_sweep": {"--lrs": "--device-lrs", "--attack-n": "--attack-subset"},
    "epsim.gradcheck": {"--batch": "--batch-size"},
    "epsim.energy": {"--n": "--test-subset", "--attack-n": "--attack-subset"},
}


def _options(parser):
    """The visible options (not -h, not the hidden deprecated aliases)."""
    return [a for a in parser._actions if a.option_strings and a.dest != "help" and a.help != "==SUPPRESS=="]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default_once(command):
    parser = COMMANDS[command][0]()
    formatter = parser._get_formatter()
    for action in _options(parser):
        assert action.help and action.help.strip(), (command, action.option_strings)
        text = formatter._expand_help(action)
        assert text.count("(default") <= 1, (command, action.option_strings, text)
        assert "(default: None)" not in text, (command, action.option_strings, text)


@pytest.mark.parametrize("option", sorted(SHARED))
def test_shared_names_parse_wherever_the_concept_exists(option):
    value, commands = SHARED[option]
    for command in commands:
        build, base = COMMANDS[command]
        args = build().parse_args(base + [option, value])
        got = getattr(args, option[2:].replace("-", "_"))
        assert str(got) == value, (command, option, got)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_deprecated_aliases_warn_and_land_in_the_same_place(command, capsys):
    build, base = COMMANDS[command]
    aliases = deprecated_aliases(build())
    assert OLD_NAMES[command].items() <= aliases.items(), aliases
    for old, new in aliases.items():
        value = [] if build()._option_string_actions[new].nargs == 0 else ["2"]
        want = build().parse_args(base + [new, *value])
        assert capsys.readouterr().err == ""
        got = build().parse_args(base + [old, *value])
        assert vars(got) == vars(want), (command, old)
        assert capsys.readouterr().err == f"warning: {old} is deprecated; use {new}\n"


def test_aliases_are_hidden_from_help():
    for command, (build, _) in COMMANDS.items():
        text = build().format_help()
        for old in OLD_NAMES[command]:
            assert f"{old} " not in text.replace(f"{old}-", ""), (command, old)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "epsim.export"])
def test_device_and_dataset_are_validated(command, capsys):
    build, base = COMMANDS[command]
    parser = build()
    if "--device" in parser._option_string_actions:
        assert parser.parse_args(base + ["--device", "cuda:1"]).device == "cuda:1"
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--device", "gpu"])
    if "--dataset" in parser._option_string_actions:
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--dataset", "imagenet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("error: ") for line in err), err


def test_lists_take_spaces_commas_or_both():
    build, base = COMMANDS["epsim.robustness"]
    spaced = build().parse_args(base[:-4] + ["--attack", "pgd-l2", "fgsm-linf", "--eps", "0.01", "8/255",
                                             "--out", "o"])
    commas = build().parse_args(base[:-4] + ["--attack", "pgd-l2,fgsm-linf", "--eps", "0.01,8/255", "--out", "o"])
    assert spaced.attack == commas.attack == ["pgd-l2", "fgsm-linf"]
    assert spaced.eps == commas.eps == [0.01, 8 / 255]
    both = build().parse_args(base + ["--eps", "log:0.05:3:3,0.5", "1", "--severities", "1,2", "5"])
    np.testing.assert_allclose(both.eps, [0.05, np.sqrt(0.15), 3.0, 0.5, 1.0])
    assert both.severities == [1, 2, 5]
    sweep = device_sweep.build_parser().parse_args(
        ["--out", "s.json", "--devices", "ideal,rram:read_noise=0,write_noise=0", "pcm", "--wire-resistances", "0,10",
         "100"])
    assert sweep.devices == ["ideal", "rram:read_noise=0,write_noise=0", "pcm"]
    assert sweep.wire_resistances == [0.0, 10.0, 100.0]
    t = train.build_parser().parse_args(["--model", "ep-cnn", "--channels", "8,16", "--lrs", "0.1", "0.05,0.01"])
    assert t.channels == [8, 16] and t.lrs == [0.1, 0.05, 0.01]
    e = energy.build_parser().parse_args(COMMANDS["epsim.energy"][1] + ["--readout-times", "1e-9,2e-9", "3e-9"])
    assert e.readout_times == [1e-9, 2e-9, 3e-9]


def test_train_options_are_classified_by_the_models_they_apply_to():
    parser = train.build_parser()
    torch_group = next(g for g in parser._action_groups if g.title == train.TORCH_GROUP)
    assert {a.dest for a in torch_group._group_actions if a.help != "==SUPPRESS=="} == train.TORCH_OPTIONS
    assert not train.TORCH_OPTIONS & train.SHARED_OPTIONS
    assert train.SHARED_OPTIONS <= {a.dest for a in parser._actions}


def test_torch_model_on_digits_gets_the_digits_preset_without_augmentation(monkeypatch, tmp_path):
    """``--model bp-cnn --dataset digits`` needs no --preset, and 8x8 digits get no crops or flips."""
    from epsim.data import load_dataset

    seen = {}

    def fake_train(config, dataset, out_dir, **kwargs):
        seen["config"] = config
        return {"test_accuracy": 0.5, "train_accuracy": 0.5, "n_test": 1, "wall_seconds": 0.0}

    monkeypatch.setattr(train, "train_torch", fake_train)
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: load_dataset("digits", train_subset=8, test_subset=4))
    for model in ("ep-cnn", "bp-cnn", "adv-cnn", "vit"):
        train.main(["--model", model, "--dataset", "digits", "--no-progress"])
        config = seen["config"]
        assert config.preset == "digits" and config.dataset == "digits" and config.augment is False, model
    train.main(["--model", "bp-cnn", "--dataset", "digits", "--preset", "cifar10-small", "--channels", "32", "64",
                "--paddings", "1", "1", "--no-progress"])
    assert seen["config"].preset == "cifar10-small" and seen["config"].augment is False
    train.main(["--model", "bp-cnn", "--dataset", "cifar100", "--no-progress"])
    assert seen["config"].preset == "cifar10-small" and seen["config"].augment is True


def test_optimizer_is_one_option_for_circuit_and_torch_models(monkeypatch):
    """``--optimizer`` overrides a torch preset's update rule, and each name builds its torch
    optimizer (adam: coupled weight decay, adamw: decoupled)."""
    import torch
    from epsim.data import load_dataset
    from epsim.training.software import make_optimizer, resolve_config

    seen = {}
    monkeypatch.setattr(train, "train_torch", lambda config, *a, **k: seen.update(config=config) or
                        {"test_accuracy": 0.5, "train_accuracy": 0.5, "n_test": 1, "wall_seconds": 0.0})
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: load_dataset("digits", train_subset=8, test_subset=4))
    train.main(["--model", "vit", "--dataset", "digits", "--no-progress"])
    assert seen["config"].optimizer == "adamw"  # the preset's
    train.main(["--model", "vit", "--dataset", "digits", "--optimizer", "sgd", "--momentum", "0.8", "--no-progress"])
    assert seen["config"].optimizer == "sgd" and seen["config"].momentum == 0.8
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    model = torch.nn.Linear(3, 2)
    for name, cls in expected.items():
        config = resolve_config("bp-cnn", "digits", optimizer=name)
        assert type(make_optimizer(model, config)) is cls


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")}
    return dict(env, PYTHONPATH=str(REPO))


def test_importing_the_library_leaves_the_environment_alone():
    code = ("import os, epsim, epsim.training, epsim.models.registry; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OPENBLAS_NUM_THREADS')); "
            "import epsim.train; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OPENBLAS_NUM_THREADS'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["None None", "PASSIVE 1"]


@pytest.mark.parametrize("module", sorted(COMMANDS) + ["epsim.gdu"])
def test_help_runs(module, tmp_path):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=_env(),
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m ")
    if module == "epsim.gdu":  # the old name: one warning line, then gradcheck's help
        assert r.stderr == "warning: python -m epsim.gdu is deprecated; use python -m epsim.gradcheck\n"
        assert "python -m epsim.gradcheck" in r.stdout
