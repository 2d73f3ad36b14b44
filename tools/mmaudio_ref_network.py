"""Reference data for the MMAudio flow network, written from the official code.

Writes

* ``v2a_sampler/mmaudio/manifests/network.json``: every state-dict key and shape of the five official variants
  (``get_my_mmaudio(name)`` built on the meta device) with their parameter counts;
* ``tests/fixtures/mmaudio/network_v1.safetensors`` and ``network_v2.safetensors``: a reduced network (official
  class, small width/depth) with random weights, inputs for a 2.5 s clip at 16 kHz, the official velocity, and the
  official 25-step Euler CFG sampling (``FlowMatching.to_data`` over ``MMAudio.ode_wrapper``, strength 4.5, with a
  negative text feature) from a fixed start.

Run (see tools/mmaudio_ref_common.py for the set-up)::

    python tools/mmaudio_ref_network.py --official /path/to/MMAudio
"""

from __future__ import annotations

import torch
from mmaudio_ref_common import half_exact, parse_args, save_fixture, shapes, write_manifest

VARIANTS = ("small_16k", "small_44k", "medium_44k", "large_44k", "large_44k_v2")
#: The reduced configuration of the fixtures (the official code paths, small sizes).
REDUCED = dict(
    latent_dim=6, clip_dim=12, sync_dim=10, text_dim=14, hidden_dim=16, depth=3, fused_depth=1, num_heads=2,
    text_seq_len=7,
)  # fmt: skip
DURATION = 2.5  # seconds: not a whole number, so the sequence-length rounding is exercised
SAMPLING_RATE, HOP = 16000, 256
CFG_STRENGTH = 4.5  # the official demo's default
STEPS = 25  # the official demo's default
WEIGHT_STD = 0.2  # random weights (the official init zeroes the output layers)
BATCH = 2


def manifest() -> None:
    from mmaudio.model.networks import get_my_mmaudio

    entries = {}
    for name in VARIANTS:
        with torch.device("meta"):  # the variant functions fix the 8 s sequence lengths themselves
            net = get_my_mmaudio(name)
        n_params = sum(p.numel() for p in net.parameters())
        entries[name] = {"num_parameters": n_params, "keys": shapes(net)}
        print(f"{name}: {len(entries[name]['keys'])} keys, {n_params / 1e6:.1f} M parameters")
    write_manifest(
        "network",
        "State-dict keys and shapes of the official MMAudio flow networks (get_my_mmaudio(name) on the meta device, "
        "8 s sequence lengths), written by tools/mmaudio_ref_network.py.",
        entries,
    )


def fixture(v2: bool) -> None:
    from mmaudio.model.flow_matching import FlowMatching
    from mmaudio.model.networks import MMAudio
    from mmaudio.model.sequence_config import SequenceConfig

    seq = SequenceConfig(duration=DURATION, sampling_rate=SAMPLING_RATE, spectrogram_frame_rate=HOP)
    lengths = dict(latent_seq_len=seq.latent_seq_len, clip_seq_len=seq.clip_seq_len, sync_seq_len=seq.sync_seq_len)
    net = MMAudio(**REDUCED, **lengths, v2=v2).eval()
    weights = half_exact(net, WEIGHT_STD)
    g = torch.Generator().manual_seed(1)
    c = REDUCED
    x = torch.randn(BATCH, seq.latent_seq_len, c["latent_dim"], generator=g)
    t = torch.rand(BATCH, generator=g)
    clip = torch.randn(BATCH, seq.clip_seq_len, c["clip_dim"], generator=g)
    sync = torch.randn(BATCH, seq.sync_seq_len, c["sync_dim"], generator=g)
    text = torch.randn(BATCH, c["text_seq_len"], c["text_dim"], generator=g)
    negative = torch.randn(BATCH, c["text_seq_len"], c["text_dim"], generator=g)
    noise = torch.randn(BATCH, seq.latent_seq_len, c["latent_dim"], generator=g)
    with torch.no_grad():
        velocity = net(x, clip, sync, text, t)
        conditions = net.preprocess_conditions(clip, sync, text)
        empty = net.get_empty_conditions(BATCH, negative_text_features=negative)
        fm = FlowMatching(min_sigma=0.0, inference_mode="euler", num_steps=STEPS)
        sample = fm.to_data(lambda tt, xx: net.ode_wrapper(tt, xx, conditions, empty, CFG_STRENGTH), noise.clone())
    tensors = {f"weights/{k}": v for k, v in weights.items()}
    tensors.update(x=x, t=t, clip=clip, sync=sync, text=text, negative_text=negative, velocity=velocity)
    tensors.update(noise=noise, cfg_sample=sample)
    meta = {
        "config": {**REDUCED, "v2": v2, "sampling_rate": SAMPLING_RATE, "spectrogram_frame_rate": HOP},
        "duration": DURATION,
        "lengths": lengths,
        "cfg_strength": CFG_STRENGTH,
        "steps": STEPS,
    }
    save_fixture(f"network_{'v2' if v2 else 'v1'}", tensors, meta)


if __name__ == "__main__":
    parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    manifest()
    for v2 in (False, True):
        fixture(v2)
