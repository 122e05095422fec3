"""DCGAN generator and discriminator whose depth follows the image size and channel count.

Radford et al.'s guidelines, as in pytorch/examples `dcgan/main.py`: strided convolutions in D and
transposed convolutions in G instead of pooling; BatchNorm in both except G's output and D's input;
no bias before BatchNorm; ReLU in G with a Tanh output; LeakyReLU(0.2) in D; N(0, 0.02) init.

The network is not written for one size: an image side S is halved while it stays even and above 7,
giving a base side b (4..7) and k stride-2 stages (28 -> 7, k=2; 32 -> 4, k=3; 64 -> 4, k=4). G
starts from a b x b map with ngf * 2^(k-1) channels and halves the channels at each doubling;
D mirrors it and ends with a b x b convolution to one logit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import BadInput


def stages(image_size: int) -> tuple[int, int]:
    """(base side, number of stride-2 stages) for an image side, or BadInput if unsupported."""
    side, k = int(image_size), 0
    while side % 2 == 0 and side > 7:
        side //= 2
        k += 1
    if k < 1 or not 3 <= side <= 7:
        raise BadInput(
            f"--image-size {image_size} does not fit the strided-convolution stack of the DCGAN "
            "and autoencoder models (it must be a side of 3..7 pixels doubled at least once).",
            hint="Use 28, 32 or 64 (or 8, 16, 48, 56, 128).",
        )
    return side, k


class Generator(nn.Module):
    """z (N, nz) -> image (N, C, S, S) in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, image_size: int = 64, channels: int = 3):
        super().__init__()
        base, k = stages(image_size)
        self.nz = nz
        ch = ngf * 2 ** (k - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ch, base, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(k - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent vectors to images."""
        return self.main(z.reshape(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    """image (N, C, S, S) -> one real/fake logit per image (N,)."""

    def __init__(self, ndf: int = 64, image_size: int = 64, channels: int = 3):
        super().__init__()
        base, k = stages(image_size)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        ch = ndf
        for _ in range(k - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, base, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (apply a sigmoid for D(x))."""
        return self.main(x).reshape(-1)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_generator(arch: dict[str, Any]) -> Generator:
    """A generator from the checkpoint's `arch` dict (random DCGAN-initialised weights)."""
    g = Generator(
        nz=int(arch["nz"]),
        ngf=int(arch["ngf"]),
        image_size=int(arch["image_size"]),
        channels=int(arch["channels"]),
    )
    init_weights(g)
    return g


def build_discriminator(arch: dict[str, Any]) -> Discriminator:
    """A discriminator from `arch` (uses arch["ndf"])."""
    d = Discriminator(
        ndf=int(arch["ndf"]), image_size=int(arch["image_size"]), channels=int(arch["channels"])
    )
    init_weights(d)
    return d


def build_from_meta(meta: dict[str, Any]) -> Generator:
    """The exportable generator a checkpoint describes (weights: meta["export_group"])."""
    return build_generator(meta["arch"]).eval()
