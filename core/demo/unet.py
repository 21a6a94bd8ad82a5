"""Model architectures Seamline ships: small, fully convolutional, receptive field known.

Knowing a model's receptive field is what makes tiling exact: with ``crop`` blending, tiles
whose overlap is at least twice the receptive-field radius reproduce the untiled output.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvNet", "UNet"]


class ConvNet(nn.Module):
    """A plain stack of 3x3 convolutions (no pooling): stride 1, radius = number of layers.

    Used as the reference model of the seam benchmarks, where any tiling error is the
    engine's, not the model's.
    """

    align = 1

    def __init__(self, bands: int, classes: int, *, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = bands
        for _ in range(depth - 1):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, classes, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.receptive_radius = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, bands, H, W)`` -> ``(B, classes, H, W)`` logits."""
        return self.body(x)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net (``levels`` resolutions, ``base`` channels at the top), ~120k parameters.

    Downsamples by ``2 ** (levels - 1)``, exposed as ``align``: tile starts must be multiples
    of it for tiled and untiled outputs to agree (max-pooling is not shift-invariant).
    """

    def __init__(self, bands: int = 6, classes: int = 5, *, base: int = 16, levels: int = 3):
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = bands
        for w in widths:
            self.down.append(_double_conv(cin, w))
            cin = w
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels - 1))
        )
        self.head = nn.Conv2d(widths[0], classes, 1)
        self.pool = nn.MaxPool2d(2)
        self.bands, self.classes, self.align = bands, classes, 2 ** (levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, bands, H, W)`` with H, W multiples of ``align`` -> ``(B, classes, H, W)``."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
