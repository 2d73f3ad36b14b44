"""MMAudio audio decoding: VAE and vocoders against the official code (manifests and reduced fixtures written by
tools/mmaudio_ref_vae.py and tools/mmaudio_ref_vocoder.py), the latents -> waveform front door, file loading."""

from __future__ import annotations

import math

import pytest
import torch
from mmaudio_fixtures import load_fixture, prefixed

from v2a_sampler.mmaudio.network import sequence_lengths
from v2a_sampler.mmaudio.vae import (
    VAE_CONFIGS,
    AudioVAE,
    CheckpointError,
    Decoder1d,
    Encoder1d,
    MPConv1d,
    VAEConfig,
    load_vae,
    load_vae_manifest,
    vae_state_dict_shapes,
)
from v2a_sampler.mmaudio.vocoder import (
    BIGVGAN_16K,
    BIGVGAN_V2_44K,
    BigVGAN,
    BigVGANConfig,
    MMAudioDecoder,
    load_vocoder,
    load_vocoder_manifest,
    vocoder_state_dict_shapes,
)

RTOL = 1e-4  # parity bound: max |ours - official| / max |official| (float32)
VOCODER_VARIANT = {"16k": "bigvgan_16k", "44k": "bigvgan_v2_44k"}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def modern_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """weight_g / weight_v (the released files) -> the parametrization names of the official module."""
    out = {}
    for k, v in state.items():
        k = k.replace(".weight_g", ".parametrizations.weight.original0")
        out[k.replace(".weight_v", ".parametrizations.weight.original1")] = v
    return out


def reduced_vae(mode: str, with_encoder: bool = True) -> tuple[AudioVAE, dict, dict]:
    t, meta = load_fixture(f"vae_{mode}")
    return AudioVAE(VAEConfig(**meta["config"]), with_encoder=with_encoder).eval(), t, meta


def reduced_vocoder(name: str) -> tuple[BigVGAN, dict, dict]:
    t, meta = load_fixture(name)
    return BigVGAN(BigVGANConfig.from_official(meta["config"])).eval(), t, meta


# -- full-size modules: keys, shapes, parameter counts, configuration ------------------------------------------


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_vae_matches_official_manifest(mode):
    entry = load_vae_manifest()["variants"][f"vae_{mode}"]
    ours = vae_state_dict_shapes(mode)
    assert list(ours.items()) == list(entry["keys"].items())  # same keys, shapes and order
    with torch.device("meta"):
        full, dec_only = AudioVAE(mode), AudioVAE(mode, with_encoder=False)
    assert sum(p.numel() for p in full.parameters()) == entry["num_parameters"]
    assert sum(p.numel() for p in dec_only.parameters()) == entry["num_decoder_parameters"]
    assert list(dec_only.state_dict()) == [k for k in entry["keys"] if not k.startswith("encoder.")]


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_vocoder_matches_official_manifest(mode):
    entry = load_vocoder_manifest()["variants"][VOCODER_VARIANT[mode]]
    ours = vocoder_state_dict_shapes(mode)
    assert list(ours.items()) == list(entry["keys"].items())
    with torch.device("meta"):
        model = BigVGAN(mode)
    assert sum(p.numel() for p in model.parameters()) == entry["num_parameters"]
    # strides, dilations and the final layer options do not show in the shapes: compare them with the official ones
    official = BigVGANConfig.from_official(entry["config"])
    listed = [k for k in entry["config"] if k != "resblock"]
    assert len(listed) >= 8
    assert {k: getattr(model.config, k) for k in listed} == {k: getattr(official, k) for k in listed}


def test_vocoder_constants():
    assert (BIGVGAN_16K.hop_length, BIGVGAN_V2_44K.hop_length) == (256, 512)
    assert (BIGVGAN_16K.sampling_rate, BIGVGAN_V2_44K.sampling_rate) == (16000, 44100)
    assert (VAE_CONFIGS["16k"].data_dim, VAE_CONFIGS["44k"].data_dim) == (BIGVGAN_16K.num_mels, BIGVGAN_V2_44K.num_mels)
    with pytest.raises(ValueError, match="upsample"):
        BigVGANConfig(num_mels=8, upsample_rates=(4,), upsample_kernel_sizes=(7,), upsample_initial_channel=8,
                      resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))  # fmt: skip


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_full_size_output_lengths(mode):
    """Shapes through the full-size modules (meta device) and the official sequence-length conventions."""
    with torch.device("meta"):
        dec = MMAudioDecoder(mode)
        wav = dec.decode(torch.empty(1, 10, dec.latent_dim))
    rate, hop = (16000, 256) if mode == "16k" else (44100, 512)
    assert (dec.sampling_rate, dec.hop_length, dec.latent_downsample) == (rate, hop, 2)
    assert dec.samples_per_latent == 2 * hop
    assert tuple(wav.shape) == (1, 10 * dec.samples_per_latent) == (1, dec.num_samples(10))
    # official SequenceConfig: 8 s -> 250 latents / 128000 samples (16k), 345 / 353280 (44k)
    n = dec.latent_frames(8.0)
    assert (n, dec.num_samples(n)) == ((250, 128000) if mode == "16k" else (345, 353280))
    for duration in (1.0, 2.5, 8.0, 10.24):
        n = dec.latent_frames(duration)
        assert n == sequence_lengths(duration, rate, hop)["latent"]
        assert dec.num_samples(n) >= round(duration * rate) > dec.num_samples(n - 1)


# -- parity with the official modules (reduced sizes, random weights) ----------------------------------------


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_vae_parity(mode):
    vae, t, meta = reduced_vae(mode)
    vae.load_state_dict(prefixed(t, "weights/"), strict=True)
    with torch.no_grad():
        post = vae.encode(t["mel"])
        sample = post.sample(torch.Generator().manual_seed(meta["sample_seed"]))
        decoded = vae.decode(t["latents"])
    assert rel_err(torch.cat([post.mean, post.logvar], 1), t["moments"]) <= RTOL
    assert rel_err(sample, t["sample"]) <= RTOL
    assert rel_err(decoded, t["decoded"]) <= RTOL


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_vae_decoder_only_loads_full_official_state(mode):
    vae, t, _ = reduced_vae(mode, with_encoder=False)
    vae.load_state_dict(prefixed(t, "weights/"), strict=True)  # encoder.* ignored, as the official loader drops it
    assert not any(k.startswith("encoder.") for k in vae.state_dict())
    with torch.no_grad():
        assert rel_err(vae.decode(t["latents"]), t["decoded"]) <= RTOL
    with pytest.raises(RuntimeError, match="without its encoder"):
        vae.encode(t["mel"])
    broken = {k: v for k, v in prefixed(t, "weights/").items() if k != "decoder.conv_out.weight"}
    with pytest.raises(RuntimeError, match="decoder.conv_out.weight"):
        vae.load_state_dict(broken, strict=True)


def test_vae_general_configuration():
    """Attention inside levels, two down/upsampling levels, one res block per level (official Encoder1D/Decoder1D)."""
    t, meta = load_fixture("vae_general")
    c = meta["config"]
    cfg = VAEConfig(data_dim=c["in_dim"], embed_dim=c["embed_dim"], hidden_dim=c["dim"], ch_mult=tuple(c["ch_mult"]),
                    num_res_blocks=c["num_res_blocks"], attn_layers=tuple(c["attn_layers"]),
                    down_layers=tuple(c["down_layers"]))  # fmt: skip
    enc, dec = Encoder1d(cfg), Decoder1d(cfg)
    enc.load_state_dict(prefixed(t, "encoder/"), strict=True)
    dec.load_state_dict(prefixed(t, "decoder/"), strict=True)
    with torch.no_grad():
        assert rel_err(enc(t["x"]), t["encoded"]) <= RTOL
        assert rel_err(dec(t["z"]), t["decoded"]) <= RTOL
    assert cfg.downsample == 4
    with pytest.raises(ValueError, match="down_layers"):
        Decoder1d(VAEConfig(data_dim=4, embed_dim=2, hidden_dim=4, ch_mult=(1, 2), down_layers=(1,)))


def test_mpconv_normalises_at_forward_time():
    conv = MPConv1d(3, 4, 3)
    with torch.no_grad():
        conv.weight.mul_(7.0)
    w = conv.normalized_weight()
    fan_in = 3 * 3
    expected = conv.weight / (1e-4 + conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1) / math.sqrt(fan_in))
    torch.testing.assert_close(w, expected / math.sqrt(fan_in))
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(conv(x, gain=2.0), torch.nn.functional.conv1d(x, 2.0 * w, padding=1))


@pytest.mark.parametrize("name", ["bigvgan_16k", "bigvgan_v2_44k", "bigvgan_snake"])
def test_vocoder_parity(name):
    model, t, meta = reduced_vocoder(name)
    state = prefixed(t, "generator/")
    fresh = model.state_dict()
    for k, v in state.items():  # the anti-aliasing filters are buffers: ours must equal the official ones
        if k.endswith(".filter"):
            torch.testing.assert_close(fresh[k], v, rtol=0, atol=1e-7)
    # the released-file spelling (weight_g / weight_v) for the MMAudio vocoders; parametrization names otherwise
    assert any(k.endswith(".weight_g") for k in state) == (name != "bigvgan_snake")
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(t["mel"])
        assert out.shape == t["waveform"].shape
        assert out.shape[-1] == t["mel"].shape[-1] * model.hop_length
        assert rel_err(out, t["waveform"]) <= RTOL
        model.fuse_weight_norm()
        assert model.weight_norm_fused and "conv_pre.weight" in model.state_dict()
        assert rel_err(model(t["mel"]), t["waveform"]) <= RTOL
        folded = model.state_dict()
        # the other spellings: parametrization names, and weight norm folded into plain weights
        other = BigVGAN(model.config).eval()
        other.load_generator_state(modern_keys(state))
        assert rel_err(other(t["mel"]), t["waveform"]) <= RTOL
        other = BigVGAN(model.config).eval()
        other.load_generator_state(folded)
        assert other.weight_norm_fused
        assert rel_err(other(t["mel"]), t["waveform"]) <= RTOL
    with pytest.raises(ValueError, match="fused"):
        other.load_generator_state(state)


def write_official_files(tmp_path, mode: str, t: dict) -> tuple:
    """The reduced fixtures as the released files are laid out: flat VAE dict; ``{"generator": ...}``."""
    vae_path, voc_path = tmp_path / f"v1-{mode[:2]}.pth", tmp_path / "generator.pt"
    torch.save(prefixed(t, "vae/"), vae_path)
    torch.save({"generator": prefixed(t, "generator/")}, voc_path)
    return vae_path, voc_path


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_end_to_end_matches_official_autoencoder(tmp_path, mode):
    """Official AutoEncoderModule(need_vae_encoder=False).decode + vocode on channels-last latents."""
    t, meta = load_fixture(VOCODER_VARIANT[mode])
    vae_cfg = VAEConfig(**load_fixture(f"vae_{mode}")[1]["config"])
    vae_path, voc_path = write_official_files(tmp_path, mode, t)
    vae = load_vae(vae_path, AudioVAE(vae_cfg, with_encoder=False))
    vocoder = load_vocoder(voc_path, BigVGAN(BigVGANConfig.from_official(meta["config"])))
    assert vocoder.weight_norm_fused and not vae.training
    dec = MMAudioDecoder(mode, vae=vae, vocoder=vocoder)
    latents = t["e2e_latents"]
    with torch.no_grad():
        assert rel_err(dec.mel(latents), t["e2e_mel"]) <= RTOL
        wav = dec.decode(latents)
    assert wav.dtype == torch.float32 and wav.shape == (latents.shape[0], dec.num_samples(latents.shape[1]))
    assert rel_err(wav, t["e2e_waveform"][:, 0]) <= RTOL
    duration = (latents.shape[1] - 0.5) * dec.samples_per_latent / dec.sampling_rate
    with torch.no_grad():
        cut = dec.decode(latents, duration=duration)
    assert cut.shape[-1] == round(duration * dec.sampling_rate)
    torch.testing.assert_close(cut, wav[:, : cut.shape[-1]])
    with pytest.raises(ValueError, match="fewer than"):
        dec.decode(latents, duration=latents.shape[1] * dec.samples_per_latent / dec.sampling_rate + 0.01)

    # low-precision inputs are cast to the module dtype; float16 / bfloat16 decoders run and stay close
    with torch.no_grad():
        torch.testing.assert_close(dec.decode(latents.half()), dec.decode(latents.half().float()))
        for dtype, tol in ((torch.float16, 0.03), (torch.bfloat16, 0.08)):
            low = dec.to(dtype).decode(latents)
            assert low.dtype == torch.float32 and torch.isfinite(low).all()
            assert (low - wav).abs().max() < tol, dtype


# -- files and errors ------------------------------------------------------------------------------------------


def test_loader_errors(tmp_path):
    t, _ = load_fixture("bigvgan_16k")
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="no such file") as e:
        MMAudioDecoder.from_official(missing, missing)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no such file"):
        load_vocoder(missing)

    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable PyTorch checkpoint"):
        load_vae(junk)

    wrong = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="not an official MMAudio VAE"):
        load_vae(wrong)
    with pytest.raises(CheckpointError, match="no 'generator' state dict"):
        load_vocoder(wrong)

    vae_state = prefixed(t, "vae/")
    torch.save(vae_state, wrong)
    with pytest.raises(CheckpointError, match="is the 16k VAE, expected 44k"):
        load_vae(wrong, mode="44k")
    with pytest.raises(CheckpointError, match="does not fit") as e:  # reduced weights into the reduced 44k size
        load_vae(wrong, AudioVAE(VAEConfig(data_dim=80, embed_dim=4, hidden_dim=16)))
    assert "\n" not in str(e.value)

    gen = prefixed(t, "generator/")
    torch.save({"generator": gen}, wrong)
    with pytest.raises(CheckpointError, match="is the 16k vocoder, expected 44k"):
        load_vocoder(wrong, mode="44k")
    cfg = BigVGANConfig.from_official({**load_fixture("bigvgan_16k")[1]["config"], "upsample_initial_channel": 128})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_vocoder(wrong, BigVGAN(cfg))
    torch.save({"generator": {k: v for k, v in gen.items() if "resblocks.0." not in k}}, wrong)
    with pytest.raises(CheckpointError, match="Missing key"):
        load_vocoder(wrong, BigVGAN(BigVGANConfig.from_official(load_fixture("bigvgan_16k")[1]["config"])))


def test_weights_only_loading(tmp_path):
    """Files are read with weights_only=True: a pickle holding arbitrary objects is refused, not executed."""
    path = tmp_path / "pickled.pt"
    torch.save({"generator": {"conv_pre.weight": torch.zeros(1)}, "obj": Exotic()}, path)
    with pytest.raises(CheckpointError, match="not a loadable PyTorch checkpoint"):
        load_vocoder(path)


class Exotic:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def test_mode_mismatch():
    vae = AudioVAE(VAEConfig(data_dim=80, embed_dim=4, hidden_dim=8), with_encoder=False)
    vocoder = BigVGAN(BigVGANConfig.from_official(load_fixture("bigvgan_v2_44k")[1]["config"]))
    with pytest.raises(ValueError, match="mel bands"):
        MMAudioDecoder("16k", vae=vae, vocoder=vocoder)
    with pytest.raises(ValueError, match="unknown MMAudio mode"):
        MMAudioDecoder("22k")
    with pytest.raises(ValueError, match="channels last"):
        MMAudioDecoder("16k", vae=vae, vocoder=BigVGAN(BigVGANConfig.from_official(
            load_fixture("bigvgan_16k")[1]["config"]))).mel(torch.zeros(1, 4, 3))  # fmt: skip
