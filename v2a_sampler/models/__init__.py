"""Trainable denoisers: the architecture registry and the one loader for every model folder.

* :class:`DenoiserModule`: base class of ``nn.Module`` denoisers (protocol facts + constructor kwargs).
* :func:`register_architecture`: make a class loadable by name.
* :func:`save_pretrained` / :func:`from_pretrained`: ``model.safetensors`` + ``config.json`` folders, local or on
  the Hugging Face Hub.
* :class:`ToyMLP` (``"mlp"``): the class-conditional MLP of the 2D guidance lab.
* :class:`V2AFlow` (``"v2a_flow"``): the video-conditioned flow transformer of the embedded V2A model.
"""

from .base import DenoiserModule, schedule_terms, time_from_noise_level
from .mlp import NULL_LABEL, ToyMLP  # importing registers "mlp"
from .registry import (
    CONFIG_NAME,
    EMBEDDED_MODELS,
    PIPELINE_CONFIG_NAME,
    WEIGHTS_NAME,
    architecture_name,
    architectures,
    build,
    embedded_model_path,
    from_pretrained,
    get_architecture,
    load_config,
    model_config,
    register_architecture,
    resolve_folder,
    save_pretrained,
)
from .v2a_flow import V2AFlow  # importing registers "v2a_flow"

__all__ = [
    "V2AFlow",
    "CONFIG_NAME",
    "NULL_LABEL",
    "PIPELINE_CONFIG_NAME",
    "WEIGHTS_NAME",
    "DenoiserModule",
    "ToyMLP",
    "architecture_name",
    "architectures",
    "build",
    "EMBEDDED_MODELS",
    "embedded_model_path",
    "from_pretrained",
    "get_architecture",
    "load_config",
    "model_config",
    "register_architecture",
    "resolve_folder",
    "save_pretrained",
    "schedule_terms",
    "time_from_noise_level",
]
