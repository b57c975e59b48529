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

__all__ = [
    "FVSBN",
    "MADE",
    "NADE",
    "Autoregressive",
    "Independent",
    "MaskedConv2d",
    "PixelCNN",
    "RNADE",
]
