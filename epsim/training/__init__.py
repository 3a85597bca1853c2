"""Training: the circuit trainer, the software (torch) trainer and their shared run bookkeeping.

* :mod:`.run`: where a run is saved and resumed from (``checkpoint.pt``, ``metrics.json``,
  atomic writes), the replayed batch order, the wall clock, time limits, progress bars and
  the metrics both trainers report.
* :mod:`.circuit`: circuit models trained with centered EP (:func:`train`, :class:`TrainConfig`).
* :mod:`.software`: the torch EP-CNN and the BP-CNN / AdvCNN / ViT baselines
  (``train_torch``, ``TorchTrainConfig``, presets); imported on use, as it loads torch.

The command line is :mod:`epsim.train`; nothing here parses arguments.
"""
from ..models.loading import load_network, restore_network
from .circuit import (DEFAULT_TOL_A, LR_SCHEDULES, UNCONVERGED_COUNTED_AS, TrainConfig, build_network, evaluate,
                      final_metrics, layer_learning_rates, lr_scale, preset_config, train)
from .run import CHECKPOINT_NAME, METRICS_NAME, Run, epoch_order, num_batches

__all__ = ["CHECKPOINT_NAME", "DEFAULT_TOL_A", "LR_SCHEDULES", "METRICS_NAME", "UNCONVERGED_COUNTED_AS", "Run",
           "TrainConfig", "build_network", "epoch_order", "evaluate", "final_metrics", "layer_learning_rates",
           "load_network", "lr_scale", "num_batches", "preset_config", "restore_network", "train"]
