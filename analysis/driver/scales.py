"""What each scale of the analysis runs: ``PLANS[scale]`` (``smoke``, ``cpu``, ``mnist``, ``gpu``).

A plan names the dataset, the training seeds, the models (``family`` circuit or software, the
``python -m epsim.train`` options, one model per seed or only the first seed), the attacks (images,
APGD steps and restarts, losses, Square queries, ε per norm, corruptions and severities, and,
where given, the seed paper's attack protocol ``advep`` beside the harness's), the
adversarial-example, fidelity, device-sweep and energy settings. :func:`.plan.build_plan` turns
a plan into command lines.
"""
from __future__ import annotations

SCALES = ("smoke", "cpu", "mnist", "gpu")


# Models: label -> how to train it. ``family`` is "circuit" (resistive EP network solved by
# the numba nodal-analysis solver) or "software" (torch). ``seeds``: "all" trains one
# model per --seeds value (curves get confidence intervals over seeds), "first" only the
# first seed. ``certify: False`` marks a circuit without certificates (not monotone).
def _circuit(model, *extra, seeds="all"):
    return {"family": "circuit", "train": ["--model", model, "--backend", "numba", *extra], "seeds": seeds}


def _software(model, *extra, seeds="first"):
    return {"family": "software", "train": ["--model", model, "--backend", "torch", *extra], "seeds": seeds}


# Small torch models for 8x8 digits: two conv layers (8 -> 4 -> 2 after pooling), no random
# crops (4-pixel crops would cut half of an 8x8 digit away), CPU.
_DIGITS_CONV = ("--channels", "32", "64", "--paddings", "1", "1", "--no-augment", "--device", "cpu")

# The passive two-conv differential circuit CNN on MNIST and its training settings (README, *Deep
# circuit CNN*: 97.1 % after 10 epochs, 97.4 % after 20).
_CNN2_ARCH = "conv:16:5:2,conv:32:3:2,dense:10"
_CNN2_TRAIN = ("--differential", "--input-gain", "200", "--beta", "1", "--lr", "0.001", "--momentum", "0.9",
               "--lr-layers", "1", "3", "9", "--batch-size", "4", "--init", "clamped-uniform",
               "--lr-schedule", "exponential")

# Energy and latency (``python -m epsim.energy``) of every circuit model's first seed: transients of
# the free phase (and the nudged phases of a training step) on the scale's test images, the early
# readout, and PGD-L2 against the early readout at the L2 headline ε (analysis/common.py HEADLINE,
# in every scale's L2 sweep), on the first ``attack_n`` of those images.
ENERGY_ATTACK_EPS = "0.5"

PLANS = {
    "smoke": {
        "what": "digits; circuit CNN (numba, 3 epochs) and a tiny BP-CNN; 20 images, 5 PGD steps, "
                "50 Square queries, the seed's protocol at one eps per norm, 2 corruptions; SPICE fidelity on 2 samples; energy/latency transients on 20 images",
        "dataset": "digits",
        "seeds": (0,),
        "models": {
            "circuit-cnn": _circuit("cnn", "--epochs", "3"),
            "bp-cnn": _software("bp-cnn", "--channels", "8", "16", "--paddings", "1", "1", "--no-augment",
                                "--device", "cpu", "--epochs", "3", "--batch-size", "64"),
        },
        "attack": {"n": "20", "steps": "5", "restarts": "1", "loss": "ce", "queries": "50",
                   "l2": "0.5,2", "linf": "0.1,0.3", "advep": {"l2": "2", "linf": "0.3", "unroll": "29"},
                   "corruptions": "gaussian_noise,contrast", "severities": "1,2,3,4,5"},
        "adversarial": {"norm": "l2", "eps": "2.0", "n": "4", "steps": "10"},
        "fidelity": {"model": "circuit-cnn", "samples": "2", "grad_n": "8", "grad_betas": "0.1,0.01",
                     "gdu": ["--batch-size", "4", "--max-iter", "1000"], "bench_spice": None},
        "device": ["--model", "cnn", "--epochs", "1", "--devices", "ideal", "rram", "--wire-resistances", "0", "100",
                   "--train-subset", "200", "--test-subset", "60", "--read-repeats", "2"],
        "energy": {"n": "20", "attack_eps": ENERGY_ATTACK_EPS, "attack_n": "10", "attack_steps": "3", "traces": "4"},
    },
    "cpu": {
        "what": "digits (8x8, 1437 train / 360 test); circuit CNN x3 seeds and circuit MLP (numba); "
                "software EP-CNN (x1 seed), BP-CNN (x3 seeds), AdvCNN (PGD-L2 0.5), ViT sized for 8x8 (torch, CPU); "
                "100 test images, APGD 20 steps CE+DLR along every gradient path, 5 eps per norm; "
                "Square 1000 queries on 50 images at 3 eps per norm; 18 corruptions x 5 severities; "
                "SPICE fidelity on 5 samples x 3 phases; energy/latency transients of the circuit models on the 360 "
                "test images",
        "dataset": "digits",
        "seeds": (0, 1, 2),
        "models": {
            "circuit-cnn": _circuit("cnn"),
            "circuit-mlp": _circuit("mlp", seeds="first"),
            "bp-cnn": _software("bp-cnn", *_DIGITS_CONV, "--epochs", "20", "--batch-size", "64", seeds="all"),
            "adv-cnn": _software("adv-cnn", *_DIGITS_CONV, "--epochs", "20", "--batch-size", "64",
                                 "--adv-norm", "l2", "--adv-eps", "0.5", "--adv-steps", "7"),
            "vit": _software("vit", "--embed-dim", "64", "--depth", "4", "--heads", "4", "--no-augment",
                             "--device", "cpu", "--epochs", "40", "--batch-size", "64"),
            # --ep-tol 1e-5: a tighter per-sample stop than the small preset's 1e-4 (digits relax quickly)
            "ep-cnn": _software("ep-cnn", *_DIGITS_CONV, "--epochs", "8", "--batch-size", "16", "--ep-tol", "1e-5"),
        },
        "attack": {"n": "100", "steps": "20", "restarts": "1", "loss": "ce,dlr", "queries": "1000",
                   "l2": "0.1,0.25,0.5,1,2", "linf": "0.02,8/255,0.05,0.1,0.2",
                   "square": {"n": "50", "l2": "0.25,0.5,1", "linf": "0.05,0.1,0.2"},
                   "corruptions": None, "severities": "1,2,3,4,5"},
        "adversarial": {"norm": "l2", "eps": "2.0", "n": "6", "steps": "50"},
        "fidelity": {"model": "circuit-cnn", "samples": "5", "grad_n": "50", "grad_betas": "0.5,0.1,0.01,0.001",
                     "gdu": ["--batch-size", "16"], "bench_spice": ["--repeat", "3"]},
        "device": ["--model", "cnn", "--epochs", "10", "--robustness", "--attack-subset", "100"],
        # the whole digits test set; the early readout attacked on the robustness runs' image count
        "energy": {"n": "360", "attack_eps": ENERGY_ATTACK_EPS, "attack_n": "100", "attack_steps": "20", "traces": "4"},
    },
    "mnist": {
        "what": "MNIST (60,000 train / the first seeded 1,000 test images attacked); circuits: DRN-1H (20 epochs), "
                "the deep circuit CNN cnn-deep (3 epochs) and the passive two-conv differential circuit CNN "
                "(10 epochs), numba, ideal diodes (DRN-1H x3 seeds, the CNNs one seed each); software "
                "EP-CNN, BP-CNN (x3 seeds), AdvCNN (PGD-L2 1.0), ViT with the mnist presets (torch, CPU); "
                "APGD 20 steps CE+DLR+targeted DLR along every gradient path, 5 L2 / 4 Linf eps (cnn-deep and "
                "EP-CNN: on the first 200 of the 1,000 images); the seed's protocol (PGD-20, unroll 29) beside it "
                "at 3 L2 / 2 Linf eps; Square 1000 queries on 200 images (EP-CNN: 100); certificates of the "
                "monotone circuits; 18 corruptions x 5 "
                "severities; SPICE fidelity on 1 DRN-1H sample x 3 phases; energy/latency of the circuits on "
                "200 images (transients of the amplified cnn-deep: about 4 s per image on one core); "
                "device sweep of DRN-XS (3 devices, 3 epochs each; wires 0-1000 ohm on 1,000 test images, no "
                "attacks); "
                "about a day of one core, resumable",
        "dataset": "mnist",
        "seeds": (0, 1, 2),
        "models": {
            # three seeds of the cheapest EP model (about 25 min of training and 30 min of attacks
            # per seed on one core), so its claims against the BP-CNN's three have intervals over seeds
            "circuit-drn1h": _circuit("drn-1h", "--epochs", "20"),
            "circuit-cnn-deep": _circuit("cnn-deep", "--epochs", "3", seeds="first"),
            # the passive two-conv differential circuit CNN (no amplifiers; README "Deep circuit CNN"):
            # about 97 % after 10 epochs, and a fraction of cnn-deep's cost per solve
            "circuit-cnn2": {"family": "circuit", "seeds": "first", "certify": False,  # differential: not monotone
                             "train": ["--arch", _CNN2_ARCH, "--backend", "numba", *_CNN2_TRAIN, "--epochs", "10"]},
            "ep-cnn": _software("ep-cnn", "--preset", "mnist", "--device", "cpu", "--threads", "1"),
            "bp-cnn": _software("bp-cnn", "--preset", "mnist", "--device", "cpu", "--threads", "1", seeds="all"),
            "adv-cnn": _software("adv-cnn", "--preset", "mnist", "--device", "cpu", "--threads", "1",
                                 "--adv-norm", "l2", "--adv-eps", "1.0"),
            "vit": _software("vit", "--preset", "mnist", "--device", "cpu", "--threads", "1"),
        },
        "attack": {"n": "1000", "steps": "20", "restarts": "1", "loss": "ce,dlr,dlr-t", "queries": "1000",
                   # white-box runs of the four-conv circuit CNN and the software EP-CNN on the first 200 of
                   # the 1,000 images: a PGD step costs about 40 ms per image on one core along the
                   # circuit's three gradient paths, and about 50 ms for the EP-CNN's BPTT through its
                   # 60-step relaxation and prediction (up to 6-8 h per norm on 1,000 images); the
                   # EP-CNN's Square on 100 images (a 60-step relaxation per query)
                   "n_by_model": {"circuit-cnn-deep": "200", "ep-cnn": "200"},
                   "l2": "0.5,1,1.5,2,3", "linf": "0.05,0.1,0.2,0.3",
                   "square": {"n": "200", "l2": "1,2", "linf": "0.1,0.2", "n_by_model": {"ep-cnn": "100"}},
                   "advep": {"l2": "1,2,3", "linf": "0.1,0.2", "unroll": "29"},
                   "corruptions": None, "severities": "1,2,3,4,5"},
        # the headline table's columns (the other scales: analysis/common.py HEADLINE); each PGD
        # column gets its certified column where a circuit has a certificate at that ε
        "headline": (("pgd-l2", 1.0), ("pgd-l2", 2.0), ("square-l2", 2.0), ("advep-l2", 2.0), ("pgd-linf", 0.1),
                     ("square-linf", 0.1), ("advep-linf", 0.1), ("pgd-linf", 0.3)),
        "adversarial": {"norm": "l2", "eps": "3.0", "n": "6", "steps": "50"},
        "fidelity": {"model": "circuit-drn1h", "samples": "1", "grad_n": "100", "grad_betas": "0.5,0.1,0.01,0.001",
                     "gdu": ["--dataset", "mnist", "--batch-size", "16"], "bench_spice": None,
                     "spice_timeout_s": "3600"},  # a DRN-1H netlist (1.6 million conductances) takes ngspice about 17 min on a shared core
        # every wired crossbar is a sparse solve of about 316,000 wire nodes per image (0.1-0.2 s on a shared
        # core): on 1,000 test images, two read-noise draws, no attack sweep (the digits scales attack
        # the deployed chips)
        "device": ["--model", "drn-xs", "--dataset", "mnist", "--epochs", "3", "--test-subset", "1000",
                   "--read-repeats", "2", "--wire-resistances", "0", "10", "100", "1000"],
        "energy": {"n": "200", "attack_eps": ENERGY_ATTACK_EPS, "attack_n": "100", "attack_steps": "20", "traces": "4",
                   # a CNN circuit read early is a transient simulation per prediction and gradient: about
                   # 4.5 s (cnn-deep) and 0.6 s (the two-conv one) per image and PGD step on one core
                   "attack_by_model": {"circuit-cnn-deep": {"attack_n": "20", "attack_steps": "10"},
                                       "circuit-cnn2": {"attack_n": "20", "attack_steps": "10"}}},
    },
    "gpu": {
        "what": "CIFAR-10 at the seed paper's scale: circuit CNN and MLP (torch backend on CUDA), EP-CNN / BP-CNN "
                "/ AdvCNN / ViT with the cifar10-paper presets; 1000 test images, APGD 50 steps x 2 "
                "restarts, Square 1000 queries on 1000 images, CIFAR-10-C 19 x 5; energy/latency transients of the circuit "
                "models on 1000 images",
        "dataset": "cifar10",
        "seeds": (0, 1, 2),
        "models": {
            # the learning rates of the 2-core CIFAR-10 run (45.1 % after 3 epochs, analysis/cifar_cpu.sh,
            # whose nudged phases stopped on 1e-12 A); here they stop on the relative nudge rule
            "circuit-cnn": {"family": "circuit", "seeds": "all",
                            "train": ["--model", "cnn", "--backend", "torch", "--epochs", "30", "--lr", "0.05",
                                      "--lr-layers", "3", "1"]},
            "circuit-mlp": {"family": "circuit", "seeds": "all",
                            "train": ["--model", "mlp", "--backend", "torch", "--epochs", "30", "--lr", "0.05"]},
            "ep-cnn": _software("ep-cnn", "--preset", "cifar10-paper", "--device", "cuda", seeds="all"),
            "bp-cnn": _software("bp-cnn", "--preset", "cifar10-paper", "--device", "cuda", seeds="all"),
            "adv-cnn": _software("adv-cnn", "--preset", "cifar10-paper", "--device", "cuda"),
            "vit": _software("vit", "--preset", "cifar10-paper", "--device", "cuda"),
        },
        "attack": {"n": "1000", "steps": "50", "restarts": "2", "loss": "ce,dlr", "queries": "1000",
                   "l2": "log:0.05:3:8,0.5", "linf": "1/255,2/255,4/255,8/255,0.0215,16/255,0.1",
                   "square": {"n": "1000", "l2": "0.25,0.5,1", "linf": "4/255,0.0215,8/255"},
                   "corruptions": None, "severities": "1,2,3,4,5", "device": "cuda"},
        "adversarial": {"norm": "l2", "eps": "3.0", "n": "8", "steps": "100"},
        "fidelity": {"model": "circuit-cnn", "samples": "5", "grad_n": "100", "grad_betas": "0.5,0.1,0.01,0.001",
                     "gdu": ["--dataset", "cifar10", "--batch-size", "16"], "bench_spice": ["--repeat", "3"]},
        "device": ["--model", "cnn", "--dataset", "mnist", "--epochs", "10", "--robustness", "--attack-subset", "1000"],
        # the scale's image count (the first 1000 CIFAR-10 test images); the attack as at the cpu scale
        "energy": {"n": "1000", "attack_eps": ENERGY_ATTACK_EPS, "attack_n": "100", "attack_steps": "20", "traces": "4"},
    },
}
