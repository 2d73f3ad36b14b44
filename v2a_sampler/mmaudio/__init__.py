"""MMAudio (hkchengrex/MMAudio), natively: the official checkpoints under this SDK's protocol and guidance.

* :mod:`.network`: the flow network (all five variants, key-compatible; architecture ``"mmaudio"``).
* :mod:`.vae` / :mod:`.vocoder`: the 16 kHz / 44.1 kHz mel VAEs and BigVGAN vocoders; :class:`MMAudioDecoder`.
* :mod:`.synchformer`, :mod:`.clip`, :mod:`.frames`, :mod:`.features`: the conditioning features (CLIP needs the
  ``[mmaudio]`` extra: ``open_clip_torch``).
* :mod:`.hub`: the official download table, verified cached downloads, loading and conversion.
* :mod:`.checkpoints`: reading official weight files (:class:`CheckpointError`).

The key manifests under ``manifests/`` and the parity fixtures under ``tests/fixtures/mmaudio`` are written from the
official code by ``tools/mmaudio_ref_*.py``.
"""

from .checkpoints import CheckpointError
from .network import VARIANTS, MMAudio, PreparedConditions
from .vocoder import MMAudioDecoder

__all__ = ["VARIANTS", "CheckpointError", "MMAudio", "MMAudioDecoder", "PreparedConditions"]
