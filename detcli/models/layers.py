"""Building blocks shared by the YOLOX-style neck and head: conv + BatchNorm + SiLU, its depthwise
separable variant, and the CSP bottleneck stack (Wang et al. 2020, as YOLOX's `CSPLayer`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNAct(nn.Sequential):
    """k x k conv (no bias) -> BatchNorm (YOLOX's eps 1e-3, momentum 0.03) -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.03),
            nn.SiLU(inplace=True),
        )


class DWConv(nn.Sequential):
    """Depthwise k x k conv + pointwise 1x1 conv, each with BatchNorm and SiLU (YOLOX-nano)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
        )


def conv(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
         depthwise: bool = False) -> nn.Module:
    """A ConvBNAct, or a DWConv for kernels larger than 1 when `depthwise`."""
    if depthwise and kernel_size > 1:
        return DWConv(in_channels, out_channels, kernel_size, stride)
    return ConvBNAct(in_channels, out_channels, kernel_size, stride)


class Bottleneck(nn.Module):
    """1x1 -> 3x3, with a residual connection when `shortcut` and the channels match."""

    def __init__(self, channels: int, shortcut: bool = True, depthwise: bool = False):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 1)
        self.conv2 = conv(channels, channels, 3, depthwise=depthwise)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class CSPLayer(nn.Module):
    """Cross-stage partial stack: two 1x1 branches of out/2 channels, `depth` bottlenecks on one,
    concatenated and fused by a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 1, shortcut: bool = True,
                 depthwise: bool = False):
        super().__init__()
        hidden = out_channels // 2
        self.main = ConvBNAct(in_channels, hidden, 1)
        self.side = ConvBNAct(in_channels, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, shortcut, depthwise) for _ in range(depth)))
        self.fuse = ConvBNAct(2 * hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([self.blocks(self.main(x)), self.side(x)], dim=1))
