"""Pipelines: video (and text) in, soundtrack out, for each model family, behind one contract.

* :class:`V2APipeline` (:mod:`.base`): the contract the front ends use; :class:`GeneratedAudio`, :class:`RunPlan`.
* :class:`RunConfig` (:mod:`.config`): one run's settings, validated once; :func:`load_pipeline` (:mod:`.loader`).
* :class:`Pipeline` (:mod:`.embedded`): the embedded V2A model; :class:`MMAudioPipeline` (:mod:`.mmaudio`): the
  official MMAudio checkpoints.
"""

from .base import GeneratedAudio, RunPlan, V2APipeline
from .config import ConfigError, RunConfig
from .embedded import Pipeline
from .loader import PipelineLoadError, load_pipeline
from .mmaudio import MMAudioPipeline

__all__ = [
    "ConfigError",
    "GeneratedAudio",
    "MMAudioPipeline",
    "Pipeline",
    "PipelineLoadError",
    "RunConfig",
    "RunPlan",
    "V2APipeline",
    "load_pipeline",
]
