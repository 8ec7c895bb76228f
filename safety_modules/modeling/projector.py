"""The safety projector: a Honeybee C-Abstractor written in plain torch (no timm).

Structure (reference shapes at LLaVA-1.5-7B): the 576 patch features are laid on a
24x24 grid -> RegStage(depth 3, 1024->1088) -> adaptive average pool to the grid
(identity at 576) -> RegStage(depth 3, 1088->1088) -> Linear 1088->4096, SiLU,
Linear 4096->4096. Each RegStage block is timm's RegNet bottleneck with the
Honeybee settings: 1x1 conv, depthwise 3x3 conv, squeeze-excite, 1x1 conv,
LayerNorm2d after each conv, SiLU, and a 1x1 conv shortcut where channels change.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an (N, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = super().forward(x)
        return x.permute(0, 3, 1, 2)


class ConvNorm(nn.Sequential):
    """Conv (no bias) -> LayerNorm2d -> optional SiLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False),
            LayerNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(self.act(self.fc1(scale)))
        return x * scale.sigmoid()


class Bottleneck(nn.Module):
    """RegNet bottleneck block (bottleneck ratio 1, group size 1 = depthwise 3x3)."""

    def __init__(self, in_ch: int, out_ch: int, se_ratio: float) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_ch, out_ch, 1)
        self.conv2 = ConvNorm(out_ch, out_ch, 3, groups=out_ch)
        # timm sizes the squeeze-excite bottleneck from the block's input width.
        self.se = SqueezeExcite(out_ch, max(1, int(round(in_ch * se_ratio))))
        self.conv3 = ConvNorm(out_ch, out_ch, 1, act=False)
        self.downsample = ConvNorm(in_ch, out_ch, 1, act=False) if in_ch != out_ch else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act(x + shortcut)


class RegStage(nn.Sequential):
    def __init__(self, depth: int, in_ch: int, out_ch: int, se_ratio: float) -> None:
        super().__init__(*(Bottleneck(in_ch if i == 0 else out_ch, out_ch, se_ratio) for i in range(depth)))


class SafetyProjector(nn.Module):
    """C-Abstractor: (B, N, vision_width) patch features -> (B, N, text_width) safety features."""

    def __init__(
        self,
        vision_width: int,
        hidden_width: int,
        output_width: int,
        grid_size: int,
        depth: int = 3,
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.stage1 = RegStage(depth, vision_width, hidden_width, se_ratio)
        self.pool = nn.AdaptiveAvgPool2d((grid_size, grid_size))
        self.stage2 = RegStage(depth, hidden_width, hidden_width, se_ratio)
        self.readout = nn.Sequential(
            nn.Linear(hidden_width, output_width), nn.SiLU(), nn.Linear(output_width, output_width)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = features.shape
        grid = self.grid_size
        if tokens != grid * grid:
            raise ValueError(f"safety projector expects {grid * grid} patch features, got {tokens}")
        x = features.transpose(1, 2).reshape(batch, width, grid, grid)
        x = self.stage2(self.pool(self.stage1(x)))
        x = x.flatten(2).transpose(1, 2)
        return self.readout(x)
