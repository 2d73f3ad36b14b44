"""Mel features and Griffin-Lim inversion built on torch.stft."""

from __future__ import annotations

import math

import pytest
import torch

from v2a_sampler.media import audio as A

SR = 16000
N_FFT, HOP = 512, 128


def chord(seconds: float = 1.0) -> torch.Tensor:
    """A decaying A-major-ish chord (440, 660, 880 Hz): a test tone with several partials."""
    t = torch.arange(int(seconds * SR)) / SR
    tone = sum(a * torch.sin(2 * math.pi * f * t) for f, a in ((440.0, 0.5), (660.0, 0.3), (880.0, 0.2)))
    return tone * torch.exp(-2.0 * t)


def test_mel_scales_known_values_and_roundtrip():
    assert A.hz_to_mel(1000.0).item() == pytest.approx(15.0)  # Slaney: 1000 Hz / (200/3 Hz per mel)
    assert A.hz_to_mel(200.0).item() == pytest.approx(3.0)
    assert A.hz_to_mel(6400.0).item() == pytest.approx(15.0 + 27.0)  # log part: factor 6.4 every 27 mels
    assert A.hz_to_mel(1000.0, "htk").item() == pytest.approx(1000.0, abs=0.02)
    freqs = torch.tensor([0.0, 55.0, 999.0, 1001.0, 4000.0, 7999.0], dtype=torch.float64)
    for scale in ("slaney", "htk"):
        assert torch.allclose(A.mel_to_hz(A.hz_to_mel(freqs, scale), scale), freqs, atol=1e-6)
    with pytest.raises(ValueError, match="mel scale"):
        A.hz_to_mel(1.0, "bark")


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_mel_filterbank_triangles(scale):
    n_mels = 40
    fb = A.mel_filterbank(SR, N_FFT, n_mels, scale=scale, norm=None)
    freqs = torch.linspace(0, SR / 2, N_FFT // 2 + 1, dtype=torch.float64)
    assert fb.shape == (n_mels, N_FFT // 2 + 1) and (fb >= 0).all()
    # each filter peaks at its centre frequency (to within one bin)
    centres = A.mel_to_hz(torch.linspace(0.0, A.hz_to_mel(SR / 2, scale).item(), n_mels + 2), scale)[1:-1]
    bin_hz = SR / N_FFT
    assert (freqs[fb.argmax(dim=1)] - centres).abs().max() <= bin_hz
    # unnormalised triangles overlap into a partition of unity between the first and last centre
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    assert torch.allclose(fb.sum(0)[inside], torch.ones(int(inside.sum())), atol=1e-5)
    # Slaney normalisation gives each triangle unit area (in Hz) where it spans enough bins to integrate
    area = A.mel_filterbank(SR, N_FFT, n_mels, scale=scale).sum(1) * bin_hz
    wide = (fb > 0).sum(1) >= 12
    assert wide.sum() >= 10
    assert torch.allclose(area[wide], torch.ones(int(wide.sum())), rtol=0.05)


def test_log_mel_shape_peak_and_floor():
    t = torch.arange(SR) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 1000.0 * t)
    feats = A.log_mel(torch.stack([tone, torch.zeros(SR)]), SR, N_FFT, HOP, n_mels=64)
    assert feats.shape == (2, 64, 1 + SR // HOP)
    centres = A.mel_to_hz(torch.linspace(0.0, A.hz_to_mel(SR / 2).item(), 66))[1:-1]
    nearest = int((centres - 1000.0).abs().argmin())
    assert int(feats[0].mean(1).argmax()) == nearest
    assert torch.allclose(feats[1], torch.full_like(feats[1], math.log(A.LOG_FLOOR)))


def test_mel_to_magnitude_fits_nonnegatively():
    fb = A.mel_filterbank(SR, N_FFT, 64)
    mel = torch.matmul(fb, A.stft_magnitude(chord(), N_FFT, HOP))
    spec = A.mel_to_magnitude(mel, fb)
    assert (spec >= 0).all()
    error = torch.linalg.vector_norm(torch.matmul(fb, spec) - mel) / torch.linalg.vector_norm(mel)
    assert error < 0.05


def test_griffin_lim_reconstructs_a_tone():
    x = chord()
    magnitude = A.stft_magnitude(x, N_FFT, HOP)
    start = A.griffin_lim(magnitude, N_FFT, HOP, n_iter=0, length=x.shape[-1])
    y = A.griffin_lim(magnitude, N_FFT, HOP, n_iter=64, length=x.shape[-1])
    sc_start, sc = A.spectral_convergence(x, start, N_FFT, HOP), A.spectral_convergence(x, y, N_FFT, HOP)
    assert sc < 0.1  # measured 0.06
    assert sc < 0.2 * sc_start  # random phases alone: about 0.64
    assert torch.equal(y, A.griffin_lim(magnitude, N_FFT, HOP, n_iter=64, length=x.shape[-1]))  # seeded
    batch = A.griffin_lim(torch.stack([magnitude, 2 * magnitude]), N_FFT, HOP, n_iter=8, length=x.shape[-1])
    assert batch.shape == (2, x.shape[-1])
    with pytest.raises(ValueError, match="bins"):
        A.griffin_lim(magnitude[:-1], N_FFT, HOP)


def test_log_mel_inversion_matches_features():
    x = chord()
    feats = A.log_mel(x, SR, N_FFT, HOP, n_mels=80)
    y = A.log_mel_to_audio(feats, SR, N_FFT, HOP, n_iter=64, length=x.shape[-1])
    assert A.spectral_convergence(x, y, N_FFT, HOP) < 0.2  # measured 0.09
    again = A.log_mel(y, SR, N_FFT, HOP, n_mels=80)
    loud = feats > feats.max() - 6.0  # within 6 nepers (~52 dB) of the peak
    assert (again - feats)[loud].abs().mean() < 0.25
