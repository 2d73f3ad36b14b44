"""MMAudio under every guidance: the official large model, guided by the official small one.

    pip install -e ".[mmaudio]"
    python examples/mmaudio_guidance.py VIDEO --prompt "rain on a tin roof" [--device cuda] [--out out/mmaudio]

Downloads the official files once (about 10 GB for large_44k_v2 + small_44k + VAE + vocoder + Synchformer, and
the DFN5B CLIP model) into the Hugging Face cache, then writes one 44.1 kHz WAV per method: the official default
(CFG 4.5), autoguidance with MMAudio-S as the bad model, and AudioMoG's PG and HG. Needs network access the first
time; afterwards ``HF_HUB_OFFLINE=1`` works.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from v2a_sampler import Pipeline

#: Guidance per output: the official demo's CFG, then the bad-model methods (MMAudio-S guiding MMAudio-L).
METHODS = {"cfg": "cfg(4.5)", "ag": "ag(2)", "pg": "pg(2.7,0.15)", "hg": "hg(2.7,2.5,1.2)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--negative-prompt", default=None)
    ap.add_argument("--variant", default="large_44k_v2")
    ap.add_argument("--bad-variant", default="small_44k")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("out/mmaudio"))
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipe = Pipeline.from_pretrained(
        "hkchengrex/MMAudio", variant=args.variant, bad_variant=args.bad_variant, device=args.device, dtype=dtype
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, spec in METHODS.items():
        t0 = time.perf_counter()
        audio = pipe(args.video, prompt=args.prompt, negative_prompt=args.negative_prompt, guidance=spec, seed=0)
        path = audio.save(args.out / f"{args.video.stem}_{name}.wav", overwrite=True)
        print(f"{spec:<18} NFE {audio.info['nfe']:>3}  {time.perf_counter() - t0:6.1f} s  -> {path}")


if __name__ == "__main__":
    main()
