"""Reference outputs of diffusers' guiders on fixed random predictions, for the parity tests of the guidance
operators (tests/test_guidance_ops.py).

Runs the released guiders of ``diffusers`` (the PyPI wheel, imported whole; nothing stubbed) on ``STEPS`` steps of
random conditional / unconditional predictions (float64, batch ``BATCH``; the conditional one is the unconditional
one plus a smaller random update, so every guider is in its interesting regime) and writes
``tests/fixtures/guiders/diffusers_guiders.safetensors``:

* ``cond``, ``uncond``: the predictions, shape ``(STEPS, BATCH, *SHAPE)``;
* ``rescale``: ``ClassifierFreeGuidance(guidance_scale=RESCALE_W, guidance_rescale=RESCALE_PHI)``;
* ``apg``: ``AdaptiveProjectedGuidance(guidance_scale=APG_W - 1, use_original_formulation=True, eta=APG_ETA,
  adaptive_projected_guidance_rescale=APG_R, adaptive_projected_guidance_momentum=APG_BETA)`` over the steps in
  order (its momentum buffer made by ``prepare_inputs`` at step 0, as in a pipeline), and ``apg_plain`` with the
  defaults of the paper's form (``eta=0``, no cap, no momentum);
* ``zero_star``: ``ClassifierFreeZeroStarGuidance(guidance_scale=ZERO_STAR_W, zero_init_steps=ZERO_STAR_K)``;
* ``mambo``: ``MagnitudeAwareGuidance(guidance_scale=MAMBO_W, alpha=MAMBO_ALPHA)``;
* ``window_<n>_<start>_<stop>``: which of ``n`` steps ``ClassifierFreeGuidance(start=..., stop=...)`` guides
  (``_is_cfg_enabled()`` after ``set_state``), 1/0 per step, for :data:`WINDOWS`.

The settings are stored in the file's metadata (``settings``, JSON) with the diffusers version. Each guider's
``forward`` is called with ``set_state(step, STEPS, timestep)`` first, as a pipeline's denoising loop does.

How it was run (a throwaway venv; the CPU torch wheel first, then diffusers from PyPI)::

    python3 -m venv /tmp/diffenv
    /tmp/diffenv/bin/pip install torch==2.13.0 && /tmp/diffenv/bin/pip install diffusers==0.42.1
    /tmp/diffenv/bin/python tools/diffusers_guiders_ref.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "guiders" / "diffusers_guiders.safetensors"
SEED = 0
STEPS = 4
BATCH = 3
SHAPE = (4, 16)  # (channels, frames) of a small audio latent
UPDATE_SCALE = 0.3  # cond = uncond + UPDATE_SCALE * noise
RESCALE_W, RESCALE_PHI = 5.0, 0.7
APG_W, APG_ETA, APG_R, APG_BETA = 5.0, 0.3, 2.0, -0.5
ZERO_STAR_W, ZERO_STAR_K = 4.0, 1
MAMBO_W, MAMBO_ALPHA = 10.0, 0.5
#: (steps, start, stop) of the start/stop fractions checked (products that round awkwardly in floating point).
WINDOWS = ((10, 0.2, 0.8), (10, 0.3, 0.7), (7, 0.29, 0.57), (25, 0.0, 0.04), (25, 0.5, 1.0), (3, 0.0, 0.34))


def _run(guider, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    outs = []
    for i in range(STEPS):
        guider.set_state(step=i, num_inference_steps=STEPS, timestep=torch.tensor(1000 - 250 * i))
        guider.prepare_inputs({})  # what a pipeline calls each step (APG makes its momentum buffer at step 0)
        outs.append(guider.forward(cond[i], uncond[i]).pred)
    return torch.stack(outs)


def main() -> None:
    import diffusers
    from diffusers.guiders import (
        AdaptiveProjectedGuidance,
        ClassifierFreeGuidance,
        ClassifierFreeZeroStarGuidance,
        MagnitudeAwareGuidance,
    )

    g = torch.Generator().manual_seed(SEED)
    uncond = torch.randn(STEPS, BATCH, *SHAPE, generator=g, dtype=torch.float64)
    cond = uncond + UPDATE_SCALE * torch.randn(STEPS, BATCH, *SHAPE, generator=g, dtype=torch.float64)
    tensors = {"cond": cond, "uncond": uncond}
    tensors["rescale"] = _run(ClassifierFreeGuidance(guidance_scale=RESCALE_W, guidance_rescale=RESCALE_PHI),
                              cond, uncond)  # fmt: skip
    apg = AdaptiveProjectedGuidance(
        guidance_scale=APG_W - 1.0,
        use_original_formulation=True,
        eta=APG_ETA,
        adaptive_projected_guidance_rescale=APG_R,
        adaptive_projected_guidance_momentum=APG_BETA,
    )
    tensors["apg"] = _run(apg, cond, uncond)
    plain = AdaptiveProjectedGuidance(
        guidance_scale=APG_W - 1.0, use_original_formulation=True, eta=0.0, adaptive_projected_guidance_rescale=0.0
    )
    tensors["apg_plain"] = _run(plain, cond, uncond)
    tensors["zero_star"] = _run(
        ClassifierFreeZeroStarGuidance(guidance_scale=ZERO_STAR_W, zero_init_steps=ZERO_STAR_K), cond, uncond
    )
    tensors["mambo"] = _run(MagnitudeAwareGuidance(guidance_scale=MAMBO_W, alpha=MAMBO_ALPHA), cond, uncond)
    for n, start, stop in WINDOWS:
        guider = ClassifierFreeGuidance(guidance_scale=3.0, start=start, stop=stop)
        flags = []
        for i in range(n):
            guider.set_state(step=i, num_inference_steps=n, timestep=torch.tensor(i))
            flags.append(int(guider._is_cfg_enabled()))
        tensors[f"window_{n}_{start}_{stop}"] = torch.tensor(flags, dtype=torch.int64)
    settings = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "seed": SEED,
        "rescale": {"w": RESCALE_W, "phi": RESCALE_PHI},
        "apg": {"w": APG_W, "eta": APG_ETA, "r": APG_R, "beta": APG_BETA},
        "zero_star": {"w": ZERO_STAR_W, "k": ZERO_STAR_K},
        "mambo": {"w": MAMBO_W, "alpha": MAMBO_ALPHA},
        "windows": [list(w) for w in WINDOWS],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT), metadata={"settings": json.dumps(settings)})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {', '.join(tensors)}")


if __name__ == "__main__":
    main()
