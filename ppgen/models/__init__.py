r"""The classic generative models of the course notes, one file per family."""

from ppgen.models.autoregressive import (
    FVSBN,
    MADE,
    NADE,
    RNADE,
    Autoregressive,
    Independent,
    MaskedConv2d,
    PixelCNN,
)
from ppgen.models.gan import GAN
from ppgen.models.vae import VAE

__all__ = [
    "FVSBN",
    "GAN",
    "MADE",
    "NADE",
    "Autoregressive",
    "Independent",
    "MaskedConv2d",
    "PixelCNN",
    "RNADE",
    "VAE",
]
