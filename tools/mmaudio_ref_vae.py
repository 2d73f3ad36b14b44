"""Reference data for the MMAudio mel VAE, written from the official code.

Writes

* ``v2a_sampler/mmaudio/manifests/vae.json``: every state-dict key and shape of the official VAEs ``get_my_vae("16k")``
  (the module ``v1-16.pth`` loads into) and ``get_my_vae("44k")`` (``v1-44.pth``), built on the meta device, with
  their parameter counts (whole VAE and decoder alone);
* ``tests/fixtures/mmaudio/vae_16k.safetensors`` / ``vae_44k.safetensors``: the official ``VAE`` class at reduced
  width (``hidden_dim=8``; the official depth, levels, attention and down/upsampling, the 80 / 128 mel statistics),
  random weights, and its outputs on fixed inputs: encoder moments and a posterior sample drawn from a seeded
  generator, and ``decode`` (with un-normalisation) of random latents;
* ``tests/fixtures/mmaudio/vae_general.safetensors``: the official ``Encoder1D`` / ``Decoder1D`` in a configuration
  the released VAEs do not use (attention inside the levels, two down/upsampling levels, one res block per level).

Weights are stored as the checkpoints hold them, i.e. *before* the official ``remove_weight_norm()`` (which
normalises every MPConv1D weight in place; our module normalises at forward time instead), parameters in float16
(exactly representable, so the float32 computation is unchanged), buffers in float32.

How it was run (CPU, one thread; the official copy extracted at /tmp/mmaudio_official)::

    /tmp/offenv/bin/python tools/mmaudio_ref_vae.py --official /tmp/mmaudio_official

(see tools/mmaudio_ref_common.py for the set-up).
"""

from __future__ import annotations

import torch
from mmaudio_ref_common import half_exact, parse_args, save_fixture, shapes, write_manifest

#: Reduced official VAE per mode: the official data_dim (mel bands, picks the stored mel statistics), small widths.
REDUCED = {"16k": dict(data_dim=80, embed_dim=4, hidden_dim=8), "44k": dict(data_dim=128, embed_dim=6, hidden_dim=8)}
#: A configuration exercising the generic code paths of Encoder1D / Decoder1D (not used by the released VAEs).
GENERAL = dict(
    dim=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_layers=[0, 2], down_layers=[0, 1], in_dim=10, embed_dim=3
)
WEIGHT_STD = 0.3  # random weights (MPConv1D normalises them; the std matters for the learnable gains only)
MEL_FRAMES = 24  # mel frames of the encoder input (a multiple of every downsampling factor used here)
BATCH = 2
SEED = 0


def randomize(module: torch.nn.Module, std: float = WEIGHT_STD, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Random float16-exact parameters; the state dict with parameters in float16 and buffers in float32."""
    half = half_exact(module, std, seed)
    params = dict(module.named_parameters())
    return {k: (half[k] if k in params else v.detach().clone()) for k, v in module.state_dict().items()}


def manifest() -> None:
    from mmaudio.ext.autoencoder.vae import get_my_vae

    entries = {}
    for mode in ("16k", "44k"):
        with torch.device("meta"):
            vae = get_my_vae(mode)
        n_params = sum(p.numel() for p in vae.parameters())
        n_dec = sum(p.numel() for p in vae.decoder.parameters())
        entries[f"vae_{mode}"] = {
            "checkpoint": f"v1-{mode[:2]}.pth",
            "num_parameters": n_params,
            "num_decoder_parameters": n_dec,
            "keys": shapes(vae),
        }
        print(f"vae_{mode}: {len(entries[f'vae_{mode}']['keys'])} keys, {n_params / 1e6:.2f} M parameters")
    write_manifest(
        "vae",
        "State-dict keys and shapes of the official MMAudio mel VAEs (mmaudio.ext.autoencoder.vae.get_my_vae(mode) "
        "on the meta device; the flat state dict of v1-16.pth / v1-44.pth), written by tools/mmaudio_ref_vae.py.",
        entries,
    )


def reduced_vae(mode: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The reduced official VAE of ``mode`` with random weights (weight norm removed) and its raw state dict."""
    from mmaudio.ext.autoencoder.vae import VAE

    vae = VAE(**REDUCED[mode]).eval()
    state = randomize(vae)
    vae.remove_weight_norm()
    return vae, state


def fixture(mode: str) -> None:
    vae, state = reduced_vae(mode)
    cfg = REDUCED[mode]
    g = torch.Generator().manual_seed(1)
    mel = vae.data_mean + vae.data_std * torch.randn(BATCH, cfg["data_dim"], MEL_FRAMES, generator=g)
    latents = torch.randn(BATCH, cfg["embed_dim"], MEL_FRAMES // 2, generator=g)
    with torch.no_grad():
        posterior = vae.encode(mel)
        sample = posterior.sample(torch.Generator().manual_seed(7))
        decoded = vae.decode(latents)
    tensors = {f"weights/{k}": v for k, v in state.items()}
    tensors.update(mel=mel, moments=posterior.parameters, sample=sample, latents=latents, decoded=decoded)
    meta = {"config": cfg, "mode": mode, "sample_seed": 7, "weight_std": WEIGHT_STD}
    save_fixture(f"vae_{mode}", tensors, meta)


def fixture_general() -> None:
    from mmaudio.ext.autoencoder.edm2_utils import MPConv1D
    from mmaudio.ext.autoencoder.vae import Decoder1D, Encoder1D

    enc = Encoder1D(**GENERAL).eval()
    dec = Decoder1D(**GENERAL, out_dim=GENERAL["in_dim"]).eval()
    tensors = {}
    for name, m, seed in (("encoder", enc, 1), ("decoder", dec, 2)):
        tensors.update({f"{name}/{k}": v for k, v in randomize(m, seed=seed).items()})
        for mod in m.modules():
            if isinstance(mod, MPConv1D):
                mod.remove_weight_norm()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(BATCH, GENERAL["in_dim"], MEL_FRAMES, generator=g)
    z = torch.randn(BATCH, GENERAL["embed_dim"], MEL_FRAMES // 4, generator=g)
    with torch.no_grad():
        tensors.update(x=x, encoded=enc(x), z=z, decoded=dec(z))
    meta = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in GENERAL.items()}}
    save_fixture("vae_general", tensors, meta)


if __name__ == "__main__":
    parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    manifest()
    for mode in ("16k", "44k"):
        fixture(mode)
    fixture_general()
