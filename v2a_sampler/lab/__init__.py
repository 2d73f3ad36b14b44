"""The 2D guidance lab: an exact fractal Gaussian-mixture data set, its metrics and the guidance experiment."""

from .toy2d import Toy2D, make_toy2d, pretrained

__all__ = ["Toy2D", "make_toy2d", "pretrained"]
