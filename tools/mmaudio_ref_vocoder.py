"""Reference data for MMAudio's vocoders (BigVGAN 16 kHz, BigVGAN v2 44.1 kHz), written from the official code.

Writes

* ``v2a_sampler/mmaudio/manifests/vocoder.json``: every state-dict key and shape, with parameter counts, of

  - ``bigvgan_16k``: the official ``BigVGANVocoder`` built from ``mmaudio/ext/bigvgan/bigvgan_vocoder.yml`` (the
    generator that ``best_netG.pt["generator"]`` loads into);
  - ``bigvgan_v2_44k``: the official ``bigvgan_v2.BigVGAN`` built from the hub configuration of
    ``nvidia/bigvgan_v2_44khz_128band_512x`` (:data:`V2_44K_CONFIG`, copied from that repository's
    ``config.json``; the generator that ``bigvgan_generator.pt["generator"]`` loads into), torch activations;

  both as built, i.e. with weight norm (``parametrizations.weight.original0/1``), plus the configuration used;
* ``tests/fixtures/mmaudio/bigvgan_16k.safetensors`` / ``bigvgan_v2_44k.safetensors``: the same configurations at
  reduced width (``upsample_initial_channel=64``; the official upsampling rates, kernels, resblocks, dilations,
  SnakeBeta, anti-aliased activations, final tanh / clamp and mel bands), random weights stored as the released
  files hold them (old-style ``weight_g`` / ``weight_v``, under ``generator/``), a random log-mel and the official
  waveform, obtained through the official loaders (``BigVGAN(ckpt_path)`` for 16 kHz,
  ``BigVGAN.from_pretrained(folder)`` for 44.1 kHz, both removing weight norm); and an end-to-end decode: the
  official ``AutoEncoderModule`` (reduced VAE of tools/mmaudio_ref_vae.py, under ``vae/``, plus this vocoder, built
  from saved files with ``need_vae_encoder=False``) on channels-last latents, exactly as ``FeaturesUtils.decode`` +
  ``vocode`` run it;
* ``tests/fixtures/mmaudio/bigvgan_snake.safetensors``: a small official BigVGAN (16 kHz code) with the plain Snake
  activation on a linear alpha scale, a path the released vocoders do not use.

Parameters are float16-exact (stored in float16), buffers (the anti-aliasing filters) float32.

How it was run (CPU, one thread; the official copy extracted at /tmp/mmaudio_official)::

    /tmp/offenv/bin/python tools/mmaudio_ref_vocoder.py --official /tmp/mmaudio_official

(see tools/mmaudio_ref_common.py for the set-up).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from mmaudio_ref_common import half_exact, parse_args, save_fixture, shapes, write_manifest

#: ``nvidia/bigvgan_v2_44khz_128band_512x`` config.json (the generator fields; training-only fields omitted).
V2_44K_CONFIG = dict(
    resblock="1", num_mels=128, upsample_rates=[8, 4, 2, 2, 2, 2], upsample_kernel_sizes=[16, 8, 4, 4, 4, 4],
    upsample_initial_channel=1536, resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3,
    use_tanh_at_final=False, use_bias_at_final=False, activation="snakebeta", snake_logscale=True,
    sampling_rate=44100, hop_size=512, n_fft=2048, win_size=2048, fmin=0, fmax=None,
)  # fmt: skip
#: Generator fields of the 16 kHz yml kept in the manifest.
FIELDS = (
    "resblock", "num_mels", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
    "resblock_kernel_sizes", "resblock_dilation_sizes", "activation", "snake_logscale",
)  # fmt: skip
REDUCED_CHANNELS = 64  # upsample_initial_channel of the fixtures (halved by each of the 6 stages: 32 ... 1)
#: The Snake fixture: two stages, linear-scale Snake, unequal resblocks.
SNAKE = dict(
    resblock="1", num_mels=8, upsample_rates=[2, 3], upsample_kernel_sizes=[4, 7], upsample_initial_channel=16,
    resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3, 5], [1, 2, 3]], activation="snake",
    snake_logscale=False,
)  # fmt: skip
MEL_FRAMES = 5  # mel frames of the vocoder input
LATENT_FRAMES = 3  # latent frames of the end-to-end decode
POST_GAIN_44K = 8  # scales the last conv of the 44.1 kHz fixture so that its final clamp to [-1, 1] engages
WEIGHT_STD = 0.5  # random weights (weight-norm gains, biases, log-scale alpha / beta)
BATCH = 2


def official_16k_config() -> dict:
    import mmaudio.ext.bigvgan.bigvgan as v1
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(v1._bigvgan_vocoder_path))


def randomize(module: torch.nn.Module, std: float = WEIGHT_STD, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float16-exact parameters (linear-scale Snake alphas / betas kept positive, around 1); state dict with
    parameters in float16 and buffers in float32, keys as the module has them (weight norm parametrizations)."""
    half_exact(module, std, seed)
    with torch.no_grad():
        for m in module.modules():
            if type(m).__name__ in ("Snake", "SnakeBeta") and not m.alpha_logscale:
                for p in m.parameters():
                    p.copy_((p.abs() + 0.5).half().float())
    params = dict(module.named_parameters())
    return {k: (v.detach().half() if k in params else v.detach().clone()) for k, v in module.state_dict().items()}


def legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module keys -> the old ``torch.nn.utils.weight_norm`` names the released files use (``weight_g`` / ``_v``)."""
    out = {}
    for k, v in state.items():
        k = k.replace("parametrizations.weight.original0", "weight_g")
        out[k.replace("parametrizations.weight.original1", "weight_v")] = v
    return out


def manifest() -> None:
    from mmaudio.ext.bigvgan.models import BigVGANVocoder
    from mmaudio.ext.bigvgan_v2.bigvgan import BigVGAN as BigVGANv2
    from mmaudio.ext.bigvgan_v2.env import AttrDict
    from omegaconf import OmegaConf

    cfg16 = official_16k_config()
    entries = {}
    for name, build, cfg, ckpt in (
        ("bigvgan_16k", lambda: BigVGANVocoder(OmegaConf.create(cfg16)), cfg16, "best_netG.pt"),
        ("bigvgan_v2_44k", lambda: BigVGANv2(AttrDict(dict(V2_44K_CONFIG))), V2_44K_CONFIG, "bigvgan_generator.pt"),
    ):
        with torch.device("meta"):
            net = build()
        n_params = sum(p.numel() for p in net.parameters())
        config = {k: cfg[k] for k in FIELDS}
        if name == "bigvgan_v2_44k":
            config.update({k: cfg[k] for k in ("use_tanh_at_final", "use_bias_at_final", "sampling_rate")})
        entries[name] = {
            "checkpoint": f'{ckpt}["generator"]',
            "num_parameters": n_params,
            "config": config,
            "keys": shapes(net),
        }
        print(f"{name}: {len(entries[name]['keys'])} keys, {n_params / 1e6:.2f} M parameters")
    write_manifest(
        "vocoder",
        "State-dict keys and shapes of MMAudio's vocoders as the official code builds them (meta device, weight norm "
        "as parametrizations; the released files name the same tensors weight_g / weight_v, which load through "
        "torch's compatibility hook): bigvgan_16k (mmaudio/ext/bigvgan, bigvgan_vocoder.yml) and bigvgan_v2_44k "
        "(mmaudio/ext/bigvgan_v2, config of nvidia/bigvgan_v2_44khz_128band_512x), written by "
        "tools/mmaudio_ref_vocoder.py.",
        entries,
    )


def mel_input(num_mels: int, frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, num_mels, frames, generator=g) - 2.0  # log-mel-like values


def reduced_16k(tmp: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict]:
    """Official 16 kHz wrapper ``BigVGAN(ckpt_path, config_path)`` on a saved reduced generator."""
    from mmaudio.ext.bigvgan.bigvgan import BigVGAN
    from mmaudio.ext.bigvgan.models import BigVGANVocoder
    from omegaconf import OmegaConf

    cfg = {**official_16k_config(), "upsample_initial_channel": REDUCED_CHANNELS}
    state = legacy_keys(randomize(BigVGANVocoder(OmegaConf.create(cfg)), seed=1))
    OmegaConf.save(OmegaConf.create(cfg), tmp / "reduced_16k.yml")
    torch.save({"generator": state}, tmp / "vocoder_16k.pt")
    return BigVGAN(tmp / "vocoder_16k.pt", config_path=tmp / "reduced_16k.yml").eval(), state, cfg


def reduced_44k(tmp: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict]:
    """Official ``bigvgan_v2.BigVGAN.from_pretrained(folder)`` on a saved reduced generator (weight norm removed)."""
    from mmaudio.ext.bigvgan_v2.bigvgan import BigVGAN as BigVGANv2
    from mmaudio.ext.bigvgan_v2.env import AttrDict

    cfg = {**V2_44K_CONFIG, "upsample_initial_channel": REDUCED_CHANNELS}
    model = BigVGANv2(AttrDict(dict(cfg)))
    state = randomize(model, seed=2)
    state["conv_post.parametrizations.weight.original0"] *= POST_GAIN_44K
    state = legacy_keys(state)
    folder = tmp / "bigvgan_v2_reduced"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save({"generator": state}, folder / "bigvgan_generator.pt")
    model = BigVGANv2.from_pretrained(str(folder), use_cuda_kernel=False)
    model.remove_weight_norm()
    return model.eval(), state, cfg


def end_to_end(mode: str, tmp: Path, vocoder_path: Path) -> dict[str, torch.Tensor]:
    """Official ``AutoEncoderModule`` (decode + vocode) with the reduced VAE and vocoder, from saved files."""
    import mmaudio.ext.autoencoder.autoencoder as ae_mod
    from mmaudio.ext.autoencoder.vae import VAE
    from mmaudio.ext.bigvgan.bigvgan import BigVGAN
    from mmaudio.ext.bigvgan_v2.bigvgan import BigVGAN as BigVGANv2
    from mmaudio_ref_vae import REDUCED, reduced_vae

    _, vae_state = reduced_vae(mode)
    torch.save({k: v.float() for k, v in vae_state.items()}, tmp / f"vae_{mode}.pth")
    ae_mod.get_my_vae = lambda m: VAE(**REDUCED[m])
    if mode == "16k":
        ae_mod.BigVGAN = lambda path: BigVGAN(path, config_path=tmp / "reduced_16k.yml")
    else:

        class Shim:  # stands in for the hub download of nvidia/bigvgan_v2_44khz_128band_512x
            @staticmethod
            def from_pretrained(repo: str, use_cuda_kernel: bool) -> torch.nn.Module:
                return BigVGANv2.from_pretrained(str(vocoder_path.parent), use_cuda_kernel=use_cuda_kernel)

        ae_mod.BigVGANv2 = Shim
    ae = ae_mod.AutoEncoderModule(
        vae_ckpt_path=tmp / f"vae_{mode}.pth", vocoder_ckpt_path=vocoder_path, mode=mode, need_vae_encoder=False
    )
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(BATCH, LATENT_FRAMES, REDUCED[mode]["embed_dim"], generator=g)  # channels last
    mel = ae.decode(latents.transpose(1, 2))  # FeaturesUtils.decode
    wav = ae.vocode(mel)
    return {
        **{f"vae/{k}": v for k, v in vae_state.items()},
        "e2e_latents": latents,
        "e2e_mel": mel.clone(),
        "e2e_waveform": wav.clone(),
    }


def fixture(mode: str, tmp: Path) -> None:
    if mode == "16k":
        model, state, cfg = reduced_16k(tmp)
        path, name = tmp / "vocoder_16k.pt", "bigvgan_16k"
    else:
        model, state, cfg = reduced_44k(tmp)
        path, name = tmp / "bigvgan_v2_reduced" / "bigvgan_generator.pt", "bigvgan_v2_44k"
    mel = mel_input(cfg["num_mels"], MEL_FRAMES, seed=3)
    with torch.inference_mode():
        wav = model(mel)
    tensors = {f"generator/{k}": v for k, v in state.items()}
    tensors.update(mel=mel, waveform=wav.clone(), **end_to_end(mode, tmp, path))
    print(f"{name}: |waveform| max {wav.abs().max():.3f} std {wav.std():.3f}")
    save_fixture(name, tensors, {"config": cfg, "mode": mode, "latent_frames": LATENT_FRAMES})


def fixture_snake() -> None:
    from mmaudio.ext.bigvgan.models import BigVGANVocoder
    from omegaconf import OmegaConf

    model = BigVGANVocoder(OmegaConf.create(SNAKE))
    state = randomize(model, seed=4)
    model.remove_weight_norm()
    mel = mel_input(SNAKE["num_mels"], MEL_FRAMES, seed=6)
    with torch.no_grad():
        wav = model.eval()(mel)
    print(f"bigvgan_snake: |waveform| max {wav.abs().max():.3f} std {wav.std():.3f}")
    save_fixture("bigvgan_snake", {**{f"generator/{k}": v for k, v in state.items()}, "mel": mel, "waveform": wav},
                 {"config": SNAKE})  # fmt: skip


if __name__ == "__main__":
    parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    manifest()
    with tempfile.TemporaryDirectory() as d:
        for mode in ("16k", "44k"):
            fixture(mode, Path(d))
    fixture_snake()
