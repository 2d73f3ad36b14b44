"""Pipelines: video (and text) in, soundtrack out, for each model family, behind one contract."""

from .embedded import GeneratedAudio, Pipeline

__all__ = ["GeneratedAudio", "Pipeline"]
