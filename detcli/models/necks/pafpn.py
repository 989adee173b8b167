"""Path Aggregation FPN (Liu et al. 2018) as YOLOX's neck (Ge et al. 2021, `yolox/models/yolo_pafpn.py`):
a top-down pass then a bottom-up pass, each merge a concatenation fused by a CSP layer.

Naming: B = images, C3..C5 = backbone levels with Ci channels, A3..A5 = output widths
(`round(c * width)` of `channels`), hl x wl = the size of level l.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detcli.models.layers import ConvBNAct, CSPLayer, conv


class PAFPN(nn.Module):
    """C3, C4, C5 -> P3, P4, P5 at the same strides.

    Top-down: 1x1 lateral C5 -> A4, upsample, concat C4, CSP -> A4; 1x1 reduce -> A3, upsample,
    concat C3, CSP -> P3. Bottom-up: 3x3 stride-2 conv on P3, concat the reduced A3 map, CSP -> P4;
    3x3 stride-2 conv, concat the C5 lateral, CSP -> P5. Every CSP layer has no residual shortcut
    and `max(round(3 * depth), 1)` bottlenecks. YOLOX-s is width 0.5, depth 0.33: 128/256/512 channels,
    one bottleneck; `depthwise` makes the 3x3 convs depthwise separable (YOLOX-nano).

    Advertises `out_channels` (list, one per level) and `strides` (= in_strides).
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        channels: list[int] = (256, 512, 1024),
        width: float = 0.5,
        depth: float = 0.33,
        depthwise: bool = False,
    ):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(
                f"neck=pafpn takes exactly three backbone levels (C3, C4, C5), got {len(in_channels)} at "
                f"strides {list(in_strides)}: set backbone.strides to three strides, e.g. [8, 16, 32]."
            )
        if len(channels) != 3:
            raise ValueError(f"neck.channels needs one value per level (three), got {list(channels)}.")
        c3, c4, c5 = in_channels
        a3, a4, a5 = self.out_channels = [round(c * width) for c in channels]
        self.strides = list(in_strides)
        n = max(round(3 * depth), 1)

        def csp(cin: int, cout: int) -> CSPLayer:
            return CSPLayer(cin, cout, n, shortcut=False, depthwise=depthwise)

        self.lateral5 = ConvBNAct(c5, a4, 1)
        self.top_down4 = csp(a4 + c4, a4)
        self.reduce4 = ConvBNAct(a4, a3, 1)
        self.top_down3 = csp(a3 + c3, a3)
        self.down3 = conv(a3, a3, 3, 2, depthwise=depthwise)
        self.bottom_up4 = csp(a3 + a3, a4)
        self.down4 = conv(a4, a4, 3, 2, depthwise=depthwise)
        self.bottom_up5 = csp(a4 + a4, a5)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if self.grad_checkpointing and self.training:
            return checkpoint(self._forward, *feats, use_reentrant=False)
        return self._forward(*feats)

    def _forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> list[Tensor]:
        lateral5 = self.lateral5(c5)  # (B, A4, h5, w5)
        inner4 = self.top_down4(torch.cat([_upsample(lateral5, c4), c4], 1))  # (B, A4, h4, w4)
        reduced4 = self.reduce4(inner4)  # (B, A3, h4, w4)
        p3 = self.top_down3(torch.cat([_upsample(reduced4, c3), c3], 1))  # (B, A3, h3, w3)
        p4 = self.bottom_up4(torch.cat([self.down3(p3), reduced4], 1))  # (B, A4, h4, w4)
        p5 = self.bottom_up5(torch.cat([self.down4(p4), lateral5], 1))  # (B, A5, h5, w5)
        return [p3, p4, p5]


def _upsample(x: Tensor, like: Tensor) -> Tensor:
    """Nearest upsampling to `like`'s size (2x, or whatever odd input sizes make it)."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")
