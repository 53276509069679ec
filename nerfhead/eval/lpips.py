"""LPIPS (Zhang et al. 2018), AlexNet variant, defined here in plain torch.

Two weight files make the metric: the AlexNet convolutional backbone (torchvision's
``alexnet-owt-7be5be79.pth``, found through ``nerfhead.weights.resolve("lpips_alex")``) and the
five learned 1x1 "linear" heads (``lpips/weights/v0.1/alex.pth`` shipped inside the ``lpips``
wheel; ``pip install --no-deps lpips`` adds it without touching torch). When either is missing
the metric is *unavailable* with the reason; nothing else is substituted.

Computation: inputs in [0, 1] are mapped to [-1, 1], shifted/scaled by the LPIPS constants,
passed through AlexNet; after each of the five ReLU stages the features are unit-normalised
along channels, squared differences are weighted per channel by the linear head, averaged over
space and summed over stages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn as nn

# (input channels, output channels, kernel, stride, padding, max-pool before this conv)
_ALEX_CONVS = ((3, 64, 11, 4, 2, False), (64, 192, 5, 1, 2, True), (192, 384, 3, 1, 1, True),
               (384, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, False))
# torchvision's index of each conv inside ``features`` (its state-dict keys)
_TORCHVISION_INDEX = (0, 3, 6, 8, 10)


class LPIPSUnavailable(RuntimeError):
    """Weights for LPIPS are missing; the message says which and where it looked."""


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional part; forward returns the five ReLU outputs LPIPS taps."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p, _ in _ALEX_CONVS)
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        taps = []
        for conv, spec in zip(self.convs, _ALEX_CONVS):
            if spec[5]:
                x = self.pool(x)
            x = torch.relu(conv(x))
            taps.append(x)
        return taps

    def load_torchvision_state(self, state: dict) -> None:
        """Load torchvision ``alexnet`` weights (keys ``features.<i>.weight/bias``)."""
        mapped = {}
        for j, idx in enumerate(_TORCHVISION_INDEX):
            for name in ("weight", "bias"):
                key = f"features.{idx}.{name}"
                if key not in state:
                    raise LPIPSUnavailable(f"AlexNet weights lack {key!r}: not a torchvision "
                                           f"alexnet state dict")
                mapped[f"convs.{j}.{name}"] = state[key]
        self.load_state_dict(mapped)


def random_alexnet_state(seed: int = 0) -> dict:
    """A randomly initialised backbone in torchvision's key layout (for tests/benchmarks)."""
    torch.manual_seed(seed)
    net = AlexNetFeatures()
    return {f"features.{idx}.{n}": getattr(net.convs[j], n).detach().clone()
            for j, idx in enumerate(_TORCHVISION_INDEX) for n in ("weight", "bias")}


def default_linear_heads_path() -> Path | None:
    """The ``alex.pth`` linear heads inside the installed ``lpips`` wheel, or None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"
    return p if p.is_file() else None


class LPIPS(nn.Module):
    """LPIPS distance; ``forward(a, b)`` on [B, 3, H, W] in [0, 1] returns [B]."""

    def __init__(self, backbone_state: dict, linear_state: dict):
        super().__init__()
        self.net = AlexNetFeatures()
        self.net.load_torchvision_state(backbone_state)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in _ALEX_CONVS)
        for k, lin in enumerate(self.lins):
            key = f"lin{k}.model.1.weight"
            if key not in linear_state:
                raise LPIPSUnavailable(f"LPIPS linear heads lack {key!r}")
            lin.weight.data.copy_(linear_state[key])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    @classmethod
    def load(cls, backbone_path=None, linear_path=None, device="cpu") -> "LPIPS":
        """Find both weight files or raise LPIPSUnavailable explaining what is missing."""
        from nerfhead.weights import WeightsUnavailable, resolve

        try:
            bpath = resolve("lpips_alex", path=backbone_path)
        except WeightsUnavailable as e:
            raise LPIPSUnavailable(f"AlexNet backbone unavailable: {e}") from None
        lpath = Path(linear_path) if linear_path else default_linear_heads_path()
        if lpath is None or not lpath.is_file():
            raise LPIPSUnavailable("LPIPS linear heads not found: install them with "
                                   "`pip install --no-deps lpips` or pass linear_path")
        try:
            backbone = torch.load(bpath, map_location="cpu", weights_only=True)
            linear = torch.load(lpath, map_location="cpu", weights_only=True)
        except Exception as e:
            raise LPIPSUnavailable(f"cannot read LPIPS weights ({bpath}, {lpath}): {e}") from None
        return cls(backbone, linear).to(device)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Differentiable in ``a`` and ``b`` (the lips stage trains with it); the network's own
        weights are frozen. Metric callers wrap it in ``torch.no_grad``."""
        dev = self.shift.device
        fa = self.net(((a.to(dev, torch.float32) * 2 - 1) - self.shift) / self.scale)
        fb = self.net(((b.to(dev, torch.float32) * 2 - 1) - self.shift) / self.scale)
        total = 0.0
        for xa, xb, lin in zip(fa, fb, self.lins):
            na = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean((2, 3))
        return total.view(-1)

    def distance(self, img_a, img_b) -> float:
        """LPIPS between two [H, W, 3] images (uint8 or float in [0, 1])."""
        from nerfhead.eval.metrics import to_float_image

        a = to_float_image(img_a).permute(2, 0, 1)[None].float()
        b = to_float_image(img_b).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            return float(self(a, b)[0])
