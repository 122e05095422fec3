"""The data layer: sources (folders and built-in offline sets), decoding, splits, preprocessing."""

from .preprocess import Preprocess
from .sources import ImageDataset, open_source
from .splits import Split, make_split

__all__ = ["ImageDataset", "Preprocess", "Split", "make_split", "open_source"]
