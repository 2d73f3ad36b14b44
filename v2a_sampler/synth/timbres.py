"""Per-class sound synthesis: one short, sharp-onset sound per call, deterministic given a numpy ``Generator``.

Every timbre has the signature ``timbre(rng, sample_rate, size) -> float32 [n]`` with its peak at 1, its onset at
sample 0 (attack of at most ``ATTACK_S``) and ``size`` in [0, 1] (the visual size of the sounding object: bigger
objects sound lower). Parameters not fixed by ``size`` (decay, exact pitch, band) are drawn from ``rng``, so the
same visual event can sound slightly different: part of the world's ambiguity.

* ``percussive``: a low membrane "thud" with a falling pitch and a noise click (bouncing balls).
* ``noise_burst``: a short band-pass noise burst, a scrape or knock (sliding blocks).
* ``tonal``: a ringing harmonic tone with a long exponential decay (bells).
* ``chirp``: an exponential upward frequency sweep (flashing lamps).
* ``buzz``: a band-limited square wave with tremolo (flashing buzzers).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["TIMBRES", "Timbre", "buzz", "chirp", "noise_burst", "percussive", "tonal"]

Timbre = Callable[[np.random.Generator, int, float], np.ndarray]

#: Longest attack (seconds) of any timbre: onsets are sharp so that they can be aligned to video frames.
ATTACK_S = 0.003
#: Release (seconds) of the sustained timbres (chirp, buzz): a raised-cosine fade that avoids a click at the end.
RELEASE_S = 0.02
#: Relative random jitter of a timbre's pitch around the value its size gives.
PITCH_JITTER = 0.05


def _envelope(n: int, sample_rate: int, attack_s: float, decay_s: float | None, release_s: float = 0.0) -> np.ndarray:
    """Linear attack, then exponential decay with time constant ``decay_s`` (or flat), then a cosine release."""
    t = np.arange(n) / sample_rate
    env = np.minimum(1.0, t / attack_s) if attack_s > 0 else np.ones(n)
    if decay_s is not None:
        env = env * np.exp(-t / decay_s)
    release = int(release_s * sample_rate)
    if release > 0:
        env[-release:] *= 0.5 * (1.0 + np.cos(np.linspace(0.0, np.pi, release)))
    return env


def _pitch(rng: np.random.Generator, low_hz: float, high_hz: float, size: float) -> float:
    """Pitch between ``high_hz`` (size 0) and ``low_hz`` (size 1), geometric, with random jitter."""
    base = high_hz * (low_hz / high_hz) ** float(np.clip(size, 0.0, 1.0))
    return base * (1.0 + PITCH_JITTER * rng.uniform(-1.0, 1.0))


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.abs(x).max()), 1e-12)).astype(np.float32)


def percussive(rng: np.random.Generator, sample_rate: int, size: float = 0.5) -> np.ndarray:
    """Membrane thud: 70-180 Hz sine whose pitch falls over ~20 ms, decaying in 60-140 ms, plus a 3 ms click."""
    f0 = _pitch(rng, 70.0, 180.0, size)
    decay = rng.uniform(0.06, 0.14)
    n = int(0.5 * sample_rate)
    t = np.arange(n) / sample_rate
    freq = f0 * (1.0 + 0.8 * np.exp(-t / 0.02))
    body = np.sin(2.0 * np.pi * np.cumsum(freq) / sample_rate)
    click = rng.standard_normal(n) * np.exp(-t / 0.003) * 0.6
    return _normalise((body + click) * _envelope(n, sample_rate, 0.001, decay))


def noise_burst(rng: np.random.Generator, sample_rate: int, size: float = 0.5) -> np.ndarray:
    """Band-pass noise centred at 1.2-4.5 kHz (Gaussian band, 60% relative width), decaying in 25-60 ms."""
    centre = min(_pitch(rng, 1200.0, 4500.0, size), 0.4 * sample_rate)
    decay = rng.uniform(0.025, 0.06)
    n = int(0.3 * sample_rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum *= np.exp(-0.5 * ((freqs - centre) / (0.3 * centre)) ** 2)
    noise = np.fft.irfft(spectrum, n)
    return _normalise(noise * _envelope(n, sample_rate, 0.001, decay))


def tonal(rng: np.random.Generator, sample_rate: int, size: float = 0.5) -> np.ndarray:
    """Bell-like tone at 300-1000 Hz: partials 1, 2, 3, 4.2 x f0 (higher ones die faster), decaying in 0.25-0.5 s."""
    f0 = _pitch(rng, 300.0, 1000.0, size)
    decay = rng.uniform(0.25, 0.5)
    n = int(1.0 * sample_rate)
    t = np.arange(n) / sample_rate
    tone = np.zeros(n)
    for ratio, amp in ((1.0, 1.0), (2.0, 0.5), (3.0, 0.3), (4.2, 0.15)):
        if ratio * f0 < 0.45 * sample_rate:
            tone += amp * np.sin(2.0 * np.pi * ratio * f0 * t) * np.exp(-t * (ratio - 1.0) / decay)
    return _normalise(tone * _envelope(n, sample_rate, 0.002, decay))


def chirp(rng: np.random.Generator, sample_rate: int, size: float = 0.5) -> np.ndarray:
    """Upward exponential sweep from 500-1000 Hz over 2-3 octaves in 0.15-0.25 s, flat loudness."""
    f_start = _pitch(rng, 500.0, 1000.0, size)
    f_end = min(f_start * rng.uniform(4.0, 8.0), 0.45 * sample_rate)
    length = rng.uniform(0.15, 0.25)
    n = int(length * sample_rate)
    t = np.arange(n) / sample_rate
    freq = f_start * (f_end / f_start) ** (t / length)
    sweep = np.sin(2.0 * np.pi * np.cumsum(freq) / sample_rate)
    return _normalise(sweep * _envelope(n, sample_rate, ATTACK_S, None, RELEASE_S))


def buzz(rng: np.random.Generator, sample_rate: int, size: float = 0.5) -> np.ndarray:
    """Band-limited square wave at 110-260 Hz (odd harmonics 1/k up to 4 kHz) with 15-30 Hz tremolo, 0.2-0.3 s."""
    f0 = _pitch(rng, 110.0, 260.0, size)
    tremolo = rng.uniform(15.0, 30.0)
    n = int(rng.uniform(0.2, 0.3) * sample_rate)
    t = np.arange(n) / sample_rate
    wave = np.zeros(n)
    for k in range(1, int(min(4000.0, 0.45 * sample_rate) / f0) + 1, 2):
        wave += np.sin(2.0 * np.pi * k * f0 * t) / k
    wave *= 1.0 - 0.4 * (0.5 - 0.5 * np.cos(2.0 * np.pi * tremolo * t))
    return _normalise(wave * _envelope(n, sample_rate, 0.002, None, RELEASE_S))


#: Timbres by name.
TIMBRES: dict[str, Timbre] = {
    "percussive": percussive,
    "noise_burst": noise_burst,
    "tonal": tonal,
    "chirp": chirp,
    "buzz": buzz,
}
