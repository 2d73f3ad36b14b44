"""The architecture registry, and saving / loading models as ``model.safetensors`` + ``config.json`` folders.

A model folder holds two files:

* ``model.safetensors``: the ``state_dict`` of a :class:`~v2a_sampler.models.base.DenoiserModule`;
* ``config.json``: ``architecture`` (a registered name), ``arch_kwargs`` (constructor keyword arguments), the
  protocol facts (``prediction``, ``schedule`` as :meth:`Schedule.to_dict`, ``condition_names``, ``amg_weight``)
  and free-form metadata (e.g. ``training``).

:func:`from_pretrained` loads such a folder from a local path or from a Hugging Face repository (optionally a
``subfolder`` of it), so trainer checkpoints, shipped assets and hub models go through one loader.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file

from .base import DenoiserModule

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Optional file of a pipeline folder naming a bad model that has no weights of its own (``{"bad": "perturb:..."}``).
PIPELINE_CONFIG_NAME = "pipeline.json"
#: Value of ``config.json["format"]`` written by :func:`save_pretrained`.
FORMAT = "v2a-sampler/denoiser"
FORMAT_VERSION = 1
#: Keys of ``config.json`` that come from the module itself and cannot be overridden by extra metadata.
RESERVED_KEYS = (
    "format",
    "format_version",
    "architecture",
    "arch_kwargs",
    "prediction",
    "schedule",
    "condition_names",
    "amg_weight",
    "dtype",
    "storage_dtype",
)
#: Weight dtypes :func:`save_pretrained` may store in (``storage_dtype``); loading casts them back to ``dtype``.
STORAGE_DTYPES = ("float32", "float16", "bfloat16")

#: Seconds to wait for a TCP connection to the hub before treating this machine as offline (the hub client itself
#: would retry for about half a minute, printing a line per retry).
HUB_CONNECT_TIMEOUT_S = 3.0
#: Environment variables naming a proxy: with one set, a direct connection test proves nothing, so none is made.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

_ARCHITECTURES: dict[str, type[DenoiserModule]] = {}
_UNREACHABLE: dict[tuple[str, int], str | None] = {}  # hub_unreachable's verdicts, once per process
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


#: Models shipped inside the package, by name: the embedded model (with its bad model) and its AMG-trained variant
#: (MGAudio's objective, sampled with a small extra CFG). ``Pipeline.from_pretrained(name)`` loads them.
EMBEDDED_MODELS = {"embedded": "v2a_default", "embedded-amg": "v2a_amg"}


def embedded_model_path(name: str = "embedded") -> Path:
    """Folder of a model shipped inside the package (:data:`EMBEDDED_MODELS`; the embedded model's bad model is in
    its ``bad/``)."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; shipped: {', '.join(EMBEDDED_MODELS)}")
    return Path(__file__).resolve().parent.parent / "assets" / EMBEDDED_MODELS[name]


def register_architecture(name: str, cls: type[DenoiserModule]) -> type[DenoiserModule]:
    """Register ``cls`` under ``name`` so that saved folders naming it can be rebuilt; returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, DenoiserModule)):
        raise TypeError(f"register_architecture({name!r}, ...) needs a DenoiserModule subclass, got {cls!r}")
    existing = _ARCHITECTURES.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"architecture name {name!r} is already registered to {existing.__qualname__}")
    _ARCHITECTURES[name] = cls
    return cls


def architectures() -> dict[str, type[DenoiserModule]]:
    """A copy of the registry: name -> class."""
    return dict(_ARCHITECTURES)


#: Built-in architectures that live outside ``v2a_sampler.models`` (imported on first use).
_BUILTIN_MODULES = {"mmaudio": "v2a_sampler.mmaudio.network"}


def get_architecture(name: str) -> type[DenoiserModule]:
    """The class registered under ``name`` (built-in modules ``v2a_sampler.models.<name>`` are imported on demand)."""
    if name not in _ARCHITECTURES and re.fullmatch(r"[a-z][a-z0-9_]*", name):
        module = _BUILTIN_MODULES.get(name, f"{__package__}.{name}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but one of its own imports is missing
                raise
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(_ARCHITECTURES)) or "none"
        raise ValueError(f"unknown architecture {name!r}; registered: {known}") from None


def architecture_name(module: DenoiserModule) -> str:
    """The registered name of ``module``'s class."""
    for name, cls in _ARCHITECTURES.items():
        if type(module) is cls:
            return name
    raise ValueError(f"{type(module).__qualname__} is not a registered architecture; call register_architecture()")


def build(
    architecture: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    prediction: str | None = None,
    schedule: Mapping[str, Any] | None = None,
    amg_weight: float | None = None,
) -> DenoiserModule:
    """A freshly initialised module of a registered architecture with the given protocol facts."""
    cls = get_architecture(architecture)
    try:
        module = cls(**dict(arch_kwargs or {}))
    except TypeError as e:
        raise ValueError(f"cannot build architecture {architecture!r} with {dict(arch_kwargs or {})}: {e}") from None
    return module.set_protocol(prediction=prediction, schedule=schedule, amg_weight=amg_weight)


def _unwrap(obj: Any) -> DenoiserModule:
    if isinstance(obj, DenoiserModule):
        return obj
    inner = getattr(obj, "module", None)
    if isinstance(inner, DenoiserModule):
        return inner
    raise TypeError(f"save_pretrained needs a DenoiserModule (or an object with one as .module), got {type(obj)}")


def model_config(module: DenoiserModule) -> dict[str, Any]:
    """The ``config.json`` content that describes ``module`` (without extra metadata)."""
    dtypes = {p.dtype for p in module.parameters()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture_name(module),
        "arch_kwargs": dict(module.arch_kwargs),
        **module.protocol_dict(),
        "dtype": str(next(iter(dtypes))).replace("torch.", "") if len(dtypes) == 1 else None,
    }


def save_pretrained(
    module_or_denoiser: Any,
    folder: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    storage_dtype: torch.dtype | str | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for a module into ``folder`` (created); returns the folder.

    ``config`` adds free-form JSON metadata (e.g. ``{"training": {...}}``) next to the module's own description.
    ``storage_dtype`` (``"float16"`` / ``"bfloat16"``) stores floating-point weights in that dtype to halve the file;
    ``config.json`` keeps the module's ``dtype`` and records ``storage_dtype``; :func:`from_pretrained` upcasts the
    weights again (a float32 model stored in float16 samples in float32, its weights rounded to float16).
    """
    module = _unwrap(module_or_denoiser)
    extra = dict(config or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"save_pretrained: config keys {clash} are set from the module itself; pass other keys")
    store = _parse_dtype(storage_dtype)
    store_name = None if store is None else str(store).replace("torch.", "")
    if store_name is not None and store_name not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {store_name!r}")
    cfg = {**model_config(module), **({"storage_dtype": store_name} if store_name else {}), **extra}
    text = json.dumps(cfg, indent=2, sort_keys=False)  # fails early on non-JSON metadata
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: _stored(v.detach().to("cpu"), store).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "architecture": cfg["architecture"]})
    (out / CONFIG_NAME).write_text(text + "\n")
    return out


def _stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` in the storage dtype (floating-point tensors only; integer buffers keep theirs)."""
    return tensor.to(dtype) if dtype is not None and torch.is_floating_point(tensor) else tensor


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected e.g. 'float32', 'bfloat16' or a torch.dtype")
    return value


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_settings(
    cache_dir: str | os.PathLike | None, local_files_only: bool | None
) -> tuple[str | os.PathLike | None, bool]:
    """``(cache folder, offline)`` for a hub call: explicit arguments, else ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE``
    read at call time."""
    offline = _env_flag("HF_HUB_OFFLINE") if local_files_only is None else bool(local_files_only)
    return (cache_dir if cache_dir is not None else os.environ.get("HF_HUB_CACHE") or None), offline


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (``"huggingface.co: [Errno -2] Name or service not
    known"``), or ``None`` when it can, or when a proxy is configured (:data:`PROXY_VARIABLES`).

    One DNS look-up and TCP connection to the hub's endpoint (``HF_ENDPOINT``) within
    :data:`HUB_CONNECT_TIMEOUT_S`, remembered for the process. Hub calls use it to go to the local cache at once on
    a machine without network, instead of the client's retries.
    """
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    if (host, port) not in _UNREACHABLE:
        try:
            with socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S):
                _UNREACHABLE[host, port] = None
        except OSError as e:
            _UNREACHABLE[host, port] = f"{host}: {e}"
    return _UNREACHABLE[host, port]


def resolve_folder(
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    weights: bool = True,
) -> Path:
    """The local folder holding ``config.json`` for a local path or a Hugging Face repo id (downloaded if needed:
    ``config.json``, the folder's ``pipeline.json`` if any, and with ``weights`` the weights).

    Environment variables are read at call time: ``HF_HUB_CACHE`` (cache folder) and ``HF_HUB_OFFLINE`` (no
    network: only the local cache is used).
    """
    path = Path(os.path.expanduser(name_or_path))  # "~user" of no user stays as written
    if path.is_dir():
        root = path
    elif path.exists():
        raise ValueError(f"{str(name_or_path)!r} is a file; from_pretrained expects a model folder or a repo id")
    elif _REPO_ID_RE.match(str(name_or_path)) and not str(name_or_path).startswith((".", "/", "~")):
        root = _download(str(name_or_path), subfolder, revision, cache_dir, local_files_only, weights)
    else:
        raise ValueError(f"{str(name_or_path)!r} is neither a local folder nor a Hugging Face repo id (owner/name)")
    folder = root / subfolder if subfolder else root
    if not (folder / CONFIG_NAME).is_file():
        where = f"{str(name_or_path)!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise ValueError(f"no {CONFIG_NAME} in {where}: not a v2a-sampler model folder")
    return folder


def _download(
    repo_id: str,
    subfolder: str | None,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool | None,
    weights: bool = True,
) -> Path:
    from huggingface_hub import snapshot_download

    cache, offline = hub_settings(cache_dir, local_files_only)
    unreachable = None if offline else hub_unreachable()
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    files = (CONFIG_NAME, PIPELINE_CONFIG_NAME, WEIGHTS_NAME) if weights else (CONFIG_NAME, PIPELINE_CONFIG_NAME)
    try:
        got = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline or unreachable is not None,
            allow_patterns=[prefix + f for f in files],
        )
    except Exception as e:  # network errors, missing repos, incomplete caches: one clear line
        if unreachable is not None:
            raise RuntimeError(f"cannot get model {repo_id!r}: no network ({unreachable}) and not in the local "
                               "Hugging Face cache") from None  # fmt: skip
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        mode = "offline (HF_HUB_OFFLINE / local_files_only), cache only" if offline else "online"
        raise RuntimeError(
            f"cannot get model {repo_id!r} from the Hugging Face Hub ({mode}): {type(e).__name__}: {reason}"
        ) from None
    return Path(got)


def load_config(name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any) -> dict[str, Any]:
    """The ``config.json`` of a model folder (local or on the hub: only the config is downloaded)."""
    folder = resolve_folder(name_or_path, subfolder, weights=False, **hub_kwargs)
    return _read_config(folder)


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise ValueError(f"{folder / CONFIG_NAME} has no 'architecture': not a v2a-sampler model config")
    return cfg


def from_pretrained(
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> DenoiserModule:
    """Load a model folder (local path or Hugging Face repo id) as a ready-to-sample denoiser in eval mode.

    Args:
        name_or_path: a folder with ``config.json`` + ``model.safetensors``, or ``"owner/name"`` on the hub.
        subfolder: a model inside the folder or repository (e.g. ``"good"``).
        device, dtype: where and in which dtype to place the weights (default: on CPU in torch's default dtype,
            float32, whatever dtype the file stores: weights saved with a ``storage_dtype`` of float16 are upcast,
            so CPU sampling stays float32).
        revision, cache_dir, local_files_only: passed to ``huggingface_hub.snapshot_download`` for repo ids.

    Raises:
        ValueError: not a model folder, unknown architecture, or weights that do not match the config.
        RuntimeError: a repo id that cannot be fetched (offline, unreachable, missing).
    """
    folder = resolve_folder(name_or_path, subfolder, revision, cache_dir, local_files_only)
    cfg = _read_config(folder)
    module = build(cfg["architecture"], cfg.get("arch_kwargs"), cfg.get("prediction"), cfg.get("schedule"))
    module.set_protocol(amg_weight=cfg.get("amg_weight"))
    names = cfg.get("condition_names")
    if names is not None and tuple(names) != tuple(module.condition_names):
        raise ValueError(f"{folder}: config conditions {names} differ from the architecture's {module.condition_names}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"no {WEIGHTS_NAME} in {folder}")
    state = load_file(str(weights))
    where = f"{weights} does not match architecture {cfg['architecture']!r} {cfg.get('arch_kwargs')}"
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise ValueError(f"{where}: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{where}: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    for p in module.parameters():
        p.requires_grad_(False)
    module.config = cfg  # the full config, metadata included
    return module.to(device=device, dtype=_parse_dtype(dtype)).eval()
