"""Conventional baselines of the robustness comparison (Mansingh et al. 2023).

* :class:`BPCNN` — the EP-CNN's layout trained with backprop: ``L`` blocks of
  ``conv k×k → batch norm → ReLU → 2×2 max-pool`` then a linear classifier.
* AdvCNN — the same network trained on PGD adversarial examples (the training loop
  in :mod:`epsim.training.software` does the attack; the model is a :class:`BPCNN`).
* :class:`ViT` — a pre-norm Vision Transformer: ``patch×patch`` patches linearly
  embedded, a class token, learned position embeddings, ``depth`` encoder layers with
  ``heads`` heads, a LayerNorm + linear head.

Every model takes ``(B, C, H, W)`` pixels in ``[0, 1]`` and normalises them itself,
so attacks perturb pixels directly; it returns ``(B, classes)`` logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import EpsimError

# Standard per-channel statistics (plain std, unlike the EP-CNN's 3x scaled one).
PIXEL_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
PIXEL_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}

_CNN = dict(dataset="cifar10", paddings=(1, 1, 1, 0), optimizer="sgd", lr=0.05, momentum=0.9,
            weight_decay=5e-4, schedule="cosine", lr_min=0.0, epochs=120, batch_size=128, augment=True)
BP_PRESETS = {
    "cifar10-paper": dict(_CNN, channels=(128, 256, 512, 512)),
    "cifar100-paper": dict(_CNN, dataset="cifar100", channels=(128, 256, 512, 1024)),
    "cifar10-small": dict(_CNN, channels=(16, 32, 64, 128), epochs=15, batch_size=64),
    # 8x8 digits: two padded conv layers, no crops or flips (98.9 % test accuracy, seed 0,
    # analysis/results/cpu; the AdvCNN with PGD-L2 0.5: 98.6 %)
    "digits": dict(_CNN, dataset="digits", channels=(32, 64), paddings=(1, 1), epochs=20, batch_size=64,
                   augment=False),
}
# Madry-style PGD training: L2 eps 0.5 (the seed paper's AdvCNN) or Linf 8/255.
_ADV = dict(adv_norm="l2", adv_eps=0.5, adv_steps=7, adv_step_size=None)
# 28x28 MNIST: cifar10-small with a padded last layer (28 -> 14 -> 7 -> 3 -> 1 after pooling), no
# crops or flips; not tuned.
BP_PRESETS["mnist"] = dict(BP_PRESETS["cifar10-small"], dataset="mnist", paddings=(1, 1, 1, 1), augment=False)
ADV_PRESETS = {name: dict(p, **_ADV) for name, p in BP_PRESETS.items()}
# Sized for two CPU cores like the BP presets: 3 PGD steps per batch, 4 epochs (the 7-step attack
# makes an MNIST epoch about 7 min on one busy core; 98.5 % after the first epoch)
ADV_PRESETS["cifar10-small"] = dict(ADV_PRESETS["cifar10-small"], adv_steps=3, epochs=4)
ADV_PRESETS["mnist"] = dict(ADV_PRESETS["mnist"], adv_steps=3, epochs=4)

_VIT = dict(dataset="cifar10", patch=4, depth=7, heads=12, optimizer="adamw", lr=1e-3, momentum=0.9,
            weight_decay=5e-2, schedule="cosine", lr_min=1e-5, epochs=200, batch_size=128, augment=True,
            dropout=0.0)
VIT_PRESETS = {
    "cifar10-paper": dict(_VIT, embed_dim=384, mlp_dim=1536),
    "cifar100-paper": dict(_VIT, dataset="cifar100", embed_dim=384, mlp_dim=1536),
    "cifar10-small": dict(_VIT, embed_dim=96, mlp_dim=192, epochs=10),
    # 8x8 digits: four 4x4 patches, 4 layers of width 64 (98.1 % test accuracy, seed 0, analysis/results/cpu)
    "digits": dict(_VIT, dataset="digits", embed_dim=64, depth=4, heads=4, mlp_dim=192, epochs=40, batch_size=64,
                   augment=False),
}
VIT_PRESETS["mnist"] = dict(VIT_PRESETS["cifar10-small"], dataset="mnist", augment=False)  # 7x7 patches; not tuned


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel; ``x`` is ``(B, C, H, W)`` in [0, 1]."""

    def __init__(self, mean, std, channels: int):
        super().__init__()
        mean = torch.full((channels,), 0.5) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std = torch.full((channels,), 0.25) if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean.reshape(1, channels, 1, 1).clone())
        self.register_buffer("std", std.reshape(1, channels, 1, 1).clone())

    def forward(self, x):
        return (x - self.mean) / self.std


def _check_input(x, image_shape, what):
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise EpsimError(f"{what} expects images of shape (B, {', '.join(map(str, image_shape))}), "
                         f"got {tuple(x.shape)}")


class BPCNN(nn.Module):
    """Backprop CNN with the EP-CNN's layout plus batch norm.

    Args:
        image_shape: ``(C, H, W)``. num_classes: classes. channels, paddings: per conv
        layer (paper: ``(128, 256, 512, 512)``, ``(1, 1, 1, 0)``). mean, std: pixel stats.
    """

    def __init__(self, image_shape=(3, 32, 32), num_classes=10, channels=(128, 256, 512, 512),
                 paddings=(1, 1, 1, 0), kernel_size=3, mean=None, std=None):
        super().__init__()
        channels, paddings = tuple(int(c) for c in channels), tuple(int(p) for p in paddings)
        if len(channels) == 0 or len(channels) != len(paddings):
            raise EpsimError(f"BP-CNN needs one padding per conv layer, got channels {channels} "
                             f"and paddings {paddings}")
        c, h, w = (int(d) for d in image_shape)
        self.image_shape, self.num_classes = (c, h, w), int(num_classes)
        self.channels, self.paddings, self.kernel_size = channels, paddings, int(kernel_size)
        self.normalize = Normalize(mean, std, c)
        blocks = []
        for c_out, pad in zip(channels, paddings):
            blocks += [nn.Conv2d(c, c_out, kernel_size, padding=pad, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            h, w = (h + 2 * pad - kernel_size + 1) // 2, (w + 2 * pad - kernel_size + 1) // 2
            if h < 1 or w < 1:
                raise EpsimError(f"BP-CNN with channels {channels} and paddings {paddings} does not "
                                 f"fit images of shape {tuple(image_shape)}; use fewer layers or more padding "
                                 f"(e.g. --channels 32 64 --paddings 1 1 for 8x8 images)")
            c = c_out
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c * h * w, self.num_classes)

    def describe(self) -> dict:
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "channels": list(self.channels), "paddings": list(self.paddings),
                "kernel_size": self.kernel_size}

    def forward(self, x):
        _check_input(x, self.image_shape, "BP-CNN")
        return self.classifier(self.features(self.normalize(x)).flatten(1))


class ViT(nn.Module):
    """Vision Transformer for small images (pre-norm encoder, class token).

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` must be multiples of ``patch``.
        embed_dim: token width (a multiple of ``heads``). depth: encoder layers.
        heads: attention heads. mlp_dim: hidden width of each MLP. dropout: rate.
    """

    def __init__(self, image_shape=(3, 32, 32), num_classes=10, patch=4, embed_dim=384, depth=7,
                 heads=12, mlp_dim=1536, dropout=0.0, mean=None, std=None):
        super().__init__()
        c, h, w = (int(d) for d in image_shape)
        if h % patch or w % patch:
            raise EpsimError(f"ViT patch size {patch} does not divide the image size {h}x{w}")
        if embed_dim % heads:
            raise EpsimError(f"ViT embedding width {embed_dim} is not a multiple of {heads} heads")
        self.image_shape, self.num_classes = (c, h, w), int(num_classes)
        self.patch, self.embed_dim, self.depth, self.heads = int(patch), int(embed_dim), int(depth), int(heads)
        self.mlp_dim, self.dropout = int(mlp_dim), float(dropout)
        self.normalize = Normalize(mean, std, c)
        self.embed = nn.Conv2d(c, embed_dim, patch, stride=patch)
        n_tokens = (h // patch) * (w // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens + 1, embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, mlp_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, self.num_classes)

    def describe(self) -> dict:
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes, "patch": self.patch,
                "embed_dim": self.embed_dim, "depth": self.depth, "heads": self.heads,
                "mlp_dim": self.mlp_dim, "dropout": self.dropout}

    def forward(self, x):
        _check_input(x, self.image_shape, "ViT")
        tokens = self.embed(self.normalize(x)).flatten(2).transpose(1, 2)        # (B, N, D)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        return self.head(self.norm(self.encoder(tokens)[:, 0]))


def build_baseline(model: str, config: dict, image_shape, num_classes, dataset_name=None) -> nn.Module:
    """``bp-cnn`` / ``adv-cnn`` (a :class:`BPCNN`) or ``vit`` from a resolved config dict."""
    mean, std = PIXEL_MEAN.get(dataset_name), PIXEL_STD.get(dataset_name)
    if model in ("bp-cnn", "adv-cnn"):
        return BPCNN(image_shape, num_classes, config["channels"], config["paddings"], mean=mean, std=std)
    if model == "vit":
        return ViT(image_shape, num_classes, config["patch"], config["embed_dim"], config["depth"],
                   config["heads"], config["mlp_dim"], config.get("dropout", 0.0), mean=mean, std=std)
    raise EpsimError(f"unknown baseline {model!r}; choose from bp-cnn, adv-cnn, vit")
