"""Convolutional autoencoder: strided-convolution encoder, transposed-convolution decoder.

The depth follows the image size the same way as the DCGAN (side halved while even and above 7:
28 -> 14 -> 7, 32 -> 16 -> 8 -> 4); the channels double at each stage from `width`. The encoder
ends in a linear layer to the latent vector, the decoder starts with one, so `encoder` and
`decoder` are separate modules with plain tensor interfaces and export separately or together.
No BatchNorm: eval mode equals train mode, so what is exported is exactly what was measured.

The decoder's last layer is linear (`Decoder.raw`); `forward` maps it to [0, 1] by clamping (MSE,
the default) or by a sigmoid (BCE, trained on logits). Training never goes through a saturating
sigmoid with MSE: on MNIST (mostly black pixels) Adam drives such an output into saturation within
~20 steps and the network stops learning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .dcgan import stages


class Encoder(nn.Module):
    """image (N, C, S, S) in [0, 1] -> latent (N, latent)."""

    def __init__(self, latent: int, image_size: int, channels: int, width: int):
        super().__init__()
        base, k = stages(image_size)
        layers: list[nn.Module] = []
        ch_in, ch = channels, width
        for _ in range(k):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            layers += [nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
            ch_in, ch = ch, ch * 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch_in * base * base, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images to latent vectors."""
        return self.fc(torch.flatten(self.features(x), 1))


class Decoder(nn.Module):
    """latent (N, latent) -> image (N, C, S, S) in [0, 1]."""

    def __init__(
        self, latent: int, image_size: int, channels: int, width: int, output: str = "clamp"
    ):
        super().__init__()
        base, k = stages(image_size)
        self.output = output
        ch = width * 2 ** (k - 1)
        self.shape = (ch, base, base)
        self.fc = nn.Sequential(
            nn.Linear(latent, ch * base * base), nn.LeakyReLU(0.2, inplace=True)
        )
        layers: list[nn.Module] = []
        for i in range(k):
            out = channels if i == k - 1 else ch // 2
            layers += [nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
            layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))
            if i < k - 1:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch = out
        self.features = nn.Sequential(*layers)

    def raw(self, z: torch.Tensor) -> torch.Tensor:
        """The last linear layer's output (the training loss is computed on it)."""
        return self.features(self.fc(z).reshape(z.shape[0], *self.shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latent vectors to images in [0, 1]."""
        r = self.raw(z)
        return torch.sigmoid(r) if self.output == "sigmoid" else r.clamp(0.0, 1.0)


class AutoEncoder(nn.Module):
    """forward(x) = decoder(encoder(x)): image -> reconstruction, both in [0, 1]."""

    def __init__(
        self,
        latent: int = 32,
        image_size: int = 28,
        channels: int = 1,
        width: int = 32,
        output: str = "clamp",
    ):
        super().__init__()
        self.encoder = Encoder(latent, image_size, channels, width)
        self.decoder = Decoder(latent, image_size, channels, width, output)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's linear output (the training loss is computed on it)."""
        return self.decoder.raw(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct images."""
        return self.decoder(self.encoder(x))


NETS = ("unet", "conv")


def build_autoencoder(arch: dict[str, Any]) -> nn.Module:
    """An autoencoder from the checkpoint's `arch` dict (random weights): arch["net"] is "unet"
    (a U-Net denoiser, models/unet.py) or "conv" (this module; the default of older files)."""
    net = arch.get("net", "conv")
    if net == "unet":
        from .unet import build_unet

        return build_unet(arch)
    if net != "conv":
        from ..errors import BadInput

        raise BadInput(
            f"Autoencoder net {net!r} is unknown to this dlpipe.",
            hint=f"Known: {', '.join(NETS)}; was the checkpoint written by a newer dlpipe?",
        )
    return AutoEncoder(
        latent=int(arch["latent"]),
        image_size=int(arch["image_size"]),
        channels=int(arch["channels"]),
        width=int(arch["width"]),
        output=str(arch.get("output", "clamp")),
    )


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """The exportable autoencoder a checkpoint describes (weights: meta["export_group"])."""
    return build_autoencoder(meta["arch"]).eval()
