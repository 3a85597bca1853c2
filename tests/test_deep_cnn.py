"""The deep circuit CNN presets (the seed's four-stage EP-CNN as an amplified circuit):
shapes, amplifiers, and one training batch through the trainer and checkpoint."""
import numpy as np
import pytest

from epsim.data import Dataset
from epsim.models.registry import PRESETS, build_circuit_model
from epsim.training import load_network, preset_config, train


def cifar_shaped(n_train=2, n_test=2, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset("cifar10", rng.random((n_train, 3, 32, 32)), rng.integers(0, 10, n_train),
                   rng.random((n_test, 3, 32, 32)), rng.integers(0, 10, n_test), 10)


@pytest.mark.parametrize("name,channels", [("cnn-deep", [16, 32, 64, 64]),
                                           ("cnn-paper", [128, 256, 512, 512])])
def test_presets_are_four_conv_stages_with_amplifiers(name, channels):
    for shape, sizes in (((3, 32, 32), [30, 14, 6, 2]), ((1, 28, 28), [26, 12, 5, 2])):
        net = build_circuit_model(name, shape, 10, amp_gains=PRESETS[name]["amp_gain"])
        assert [c.kind for c in net.connections] == ["conv"] * 4 + ["dense"]
        assert [s[0] for s in net.layer_shapes[1:5]] == channels
        assert [s[1] for s in net.layer_shapes[1:5]] == sizes
        assert all(c.kernel == 3 for c in net.connections[:4])
        assert net.has_amplifiers and net.amp_gains.size == 4


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_paper_preset_trains_one_batch_on_cpu(tmp_path, backend):
    """Plumbing only (a loose tolerance keeps it to seconds): one step of the paper-scale
    circuit, its largest node voltage per layer in the metrics, amplifier gains in the
    checkpoint."""
    config = preset_config("cnn-paper", dataset="cifar10", backend=backend, batch_size=2, epochs=1,
                           tol_A=1e-4, nudge_rtol=0.5, max_iter=200)
    metrics = train(config, cifar_shaped(), tmp_path, progress=False)
    epoch = metrics["history"][-1]
    assert len(epoch["max_node_V_per_layer"]) == 5
    assert all(v > 0 for v in epoch["max_node_V_per_layer"])
    net, _ = load_network(tmp_path / "checkpoint.pt")
    assert net.amp_gains.tolist() == PRESETS["cnn-paper"]["amp_gain"]
    assert net.arch.startswith("conv:128:3:1")
