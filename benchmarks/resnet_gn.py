"""ResNet-18 for 32x32 inputs with GroupNorm in place of BatchNorm (every layer private-clippable).

The CIFAR variant: a 3x3 stem (no max-pool), four stages of two basic blocks (64, 128, 256, 512
channels, stride 2 from the second stage on, 1x1 projection shortcuts where the shape changes),
global average pooling and a Linear classifier; about 11.2M parameters. GroupNorm with 32 groups
(per-sample statistics, so the per-sample gradients exist, unlike BatchNorm in train mode).
"""
from __future__ import annotations

import torch
from torch import nn


def _norm(c):
    return nn.GroupNorm(min(32, c), c)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.n1 = _norm(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.n2 = _norm(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                       _norm(cout))

    def forward(self, x):
        h = torch.relu(self.n1(self.c1(x)))
        h = self.n2(self.c2(h))
        return torch.relu(h + (x if self.short is None else self.short(x)))


class ResNet18GN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.norm = _norm(64)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        h = self.blocks(torch.relu(self.norm(self.stem(x))))
        return self.fc(h.mean((2, 3)))
