"""MMAudio's CLIP features: per-frame image embeddings ``[B, T, 1024]`` and per-token text features ``[B, 77, 1024]``.

MMAudio conditions on Apple's DFN5B CLIP ViT-H/14 at 384 px (``hf-hub:apple/DFN5B-CLIP-ViT-H-14-384``), run through
``open_clip`` (an optional dependency: ``pip install 'v2a-sampler[mmaudio]'``, imported only when a model is
built). What MMAudio's ``FeaturesUtils`` computes, and :class:`ClipFeatures` reproduces:

* video: 8 fps frames squashed to 384 x 384, pixels in ``[0, 1]`` normalised with the OpenAI CLIP mean/std,
  ``encode_image(..., normalize=True)``: one unit-norm embedding per frame;
* text: the prompt tokenised by the ``ViT-H-14-378-quickgelu`` tokenizer (77 tokens, padded/truncated), then the
  text transformer's hidden states of *all* 77 positions after the final LayerNorm (no pooling, no text
  projection), each token's vector L2-normalised.

The open_clip model and tokenizer are injectable (:class:`ClipFeatures` takes any ``open_clip`` ``CLIP``-like model),
so tests can use a tiny randomly initialised model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: The CLIP model MMAudio uses, as an open_clip hub name.
DFN5B_HUB_ID = "hf-hub:apple/DFN5B-CLIP-ViT-H-14-384"
#: The open_clip tokenizer MMAudio uses for prompts (the standard CLIP BPE tokenizer, 77-token context).
TOKENIZER_NAME = "ViT-H-14-378-quickgelu"
#: Side of the square frames the image tower takes, and the frame rate MMAudio samples them at.
CLIP_SIZE = 384
CLIP_FPS = 8.0
#: Per-channel mean and standard deviation of the image normalisation (the OpenAI CLIP statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The optional extra that installs open_clip.
EXTRA = "mmaudio"

Tokenizer = Callable[[list[str]], torch.Tensor]


def require_open_clip() -> Any:
    """The ``open_clip`` module, or an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module("open_clip")
    except ImportError:
        raise ImportError(
            f"MMAudio's CLIP features need open_clip: pip install 'v2a-sampler[{EXTRA}]' (or open_clip_torch)"
        ) from None


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` pixels in ``[0, 1]`` -> CLIP's input (``(x - mean) / std``, not in place)."""
    mean = torch.tensor(CLIP_MEAN, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return frames.sub(mean).div_(std)


class ClipFeatures(nn.Module):
    """MMAudio's CLIP image and text features from an ``open_clip`` CLIP model and tokenizer.

    ``model`` needs ``encode_image`` and the text tower's modules (``token_embedding``, ``positional_embedding``,
    ``transformer``, ``ln_final`` and optionally ``attn_mask``), as open_clip's ``CLIP`` has; ``tokenizer`` maps a
    list of prompts to token ids ``[B, context_length]``. Use :meth:`from_pretrained` for MMAudio's model.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        super().__init__()
        text_tower = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        missing = [a for a in text_tower if not hasattr(model, a)]
        if missing or not hasattr(model, "encode_image"):
            raise TypeError(
                f"ClipFeatures needs an open_clip CLIP model with a built-in text tower; {type(model).__name__} lacks "
                f"{', '.join(missing) or 'encode_image'}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls, name: str = DFN5B_HUB_ID, tokenizer_name: str = TOKENIZER_NAME, **kwargs: Any
    ) -> ClipFeatures:
        """MMAudio's CLIP (``open_clip.create_model_from_pretrained(name)``; ``kwargs`` go to it: ``device``,
        ``precision``, ``cache_dir``, ...) with its tokenizer."""
        open_clip = require_open_clip()
        model = open_clip.create_model_from_pretrained(name, return_transform=False, **kwargs)
        return cls(model, open_clip.get_tokenizer(tokenizer_name))

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` the image tower takes, when the model says."""
        size = getattr(getattr(self.model, "visual", None), "image_size", None)
        if size is None:
            return None
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def train(self, mode: bool = True) -> ClipFeatures:
        """Always in eval mode (a frozen feature extractor)."""
        return super().train(False)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, T, D]`` of frames ``[B, T, 3, H, W]`` with pixels in ``[0, 1]``.

        Frames go through the image tower ``batch_size`` at a time (default: all at once).
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"CLIP frames must be [B, T, 3, H, W], got {list(frames.shape)}")
        size = self.image_size
        if size is not None and tuple(frames.shape[-2:]) != size:
            raise ValueError(f"CLIP frames must be {size[0]} x {size[1]} px, got {list(frames.shape)}")
        b, t = frames.shape[:2]
        x = normalize(frames.flatten(0, 1))
        step = b * t if batch_size is None else int(batch_size)
        if step <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = torch.cat([self.model.encode_image(x[i : i + step], normalize=True) for i in range(0, b * t, step)])
        return out.view(b, t, -1)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[B, context_length]`` of ``prompts``."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a sequence of strings")
        return self.tokenizer(list(prompts))

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token text features ``[B, L, width]``: final-LayerNorm hidden states, each L2-normalised."""
        m = self.model
        cast = m.transformer.get_cast_dtype() if hasattr(m.transformer, "get_cast_dtype") else torch.float32
        device = m.token_embedding.weight.device
        x = m.token_embedding(tokens.to(device)).to(cast) + m.positional_embedding.to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=getattr(m, "attn_mask", None)))
        return F.normalize(x, dim=-1)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """MMAudio's text condition ``[B, 77, 1024]`` (for DFN5B) of ``prompts``."""
        return self.encode_tokens(self.tokenize(prompts))
