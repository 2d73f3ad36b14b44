"""Spectrogram axes: mel band centres in Hz and frame times in seconds, and the one plotting helper that the CLI and
the web app share."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib", reason="spectrogram plots need matplotlib (the [dev] extra installs it)")

from v2a_sampler.frontends import cli, plots  # noqa: E402
from v2a_sampler.media.audio import MelAxes, log_mel, mel_filterbank  # noqa: E402
from v2a_sampler.media.specs import AudioSpec  # noqa: E402
from v2a_sampler.mmaudio.vocoder import MMAudioDecoder  # noqa: E402

EMBEDDED = AudioSpec().mel_axes
MMAUDIO_16K = MMAudioDecoder("16k").mel_axes


def test_the_pipelines_mel_geometry():
    assert EMBEDDED == MelAxes(16000, 320, 64, 0.0, 8000.0, "slaney", 0.0)
    assert MMAUDIO_16K == MelAxes(16000, 256, 80, 0.0, 8000.0, "slaney", 0.5)


@pytest.mark.parametrize(
    "axes, n_fft",
    [(EMBEDDED, 1024), (MMAUDIO_16K, 1024), (MelAxes(44100, 512, 128, 0.0, 22050.0, frame_offset=0.5), 2048)],
)
def test_band_centres_are_where_the_filters_peak(axes, n_fft):
    """Each band's centre in Hz is the peak of its triangular filter (to within one FFT bin)."""
    bank = mel_filterbank(axes.sample_rate, n_fft, axes.n_mels, axes.f_min, axes.top_hz, norm=None)
    bin_hz = axes.sample_rate / n_fft
    peaks = bank.argmax(dim=1).double() * bin_hz
    centres = axes.band_hz()
    assert (peaks - centres).abs().max() < bin_hz  # asymmetric triangles: the peak bin may be the far neighbour
    assert torch.all(centres.diff() > 0) and 0 < centres[0] and centres[-1] < axes.top_hz
    # band_of inverts band_hz, and is linear in mels
    assert torch.allclose(axes.band_of(centres), torch.arange(axes.n_mels, dtype=torch.float64), atol=1e-9)


def test_frame_times_put_a_click_where_it_happened():
    """A click at 0.5 s lights up the frame of the embedded model's log-mel centred on 0.5 s."""
    sr, hop = EMBEDDED.sample_rate, EMBEDDED.hop
    wave = torch.zeros(sr)
    wave[sr // 2] = 1.0
    mel = log_mel(wave, sr, 1024, hop, EMBEDDED.n_mels, 0.0, 8000.0)
    loudest = int(mel.mean(0).argmax())
    assert EMBEDDED.frame_seconds(mel.shape[-1])[loudest].item() == pytest.approx(0.5, abs=0.25 * hop / sr)
    assert MMAUDIO_16K.frame_seconds(2).tolist() == [128 / 16000, 384 / 16000]


def test_figure_axes_are_seconds_and_hz():
    mel = torch.randn(EMBEDDED.n_mels, 251)  # 5 s at 50 frames per second (centred frames: N // hop + 1)
    fig = plots.spectrogram_figure(mel, EMBEDDED, "title")
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((-0.01, 5.01))
    assert ax.get_ylim() == pytest.approx((-0.5, 63.5))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["100", "500", "1k", "2k", "4k"]
    assert ax.get_yticks() == pytest.approx([float(EMBEDDED.band_of(f)) for f in (100, 500, 1000, 2000, 4000)])
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "frequency (Hz, mel scale)"
    plots._pyplot().close(fig)
    assert [label for _, label in plots.hz_ticks(MelAxes(44100, 512, 128, 0.0, 22050.0))][-2:] == ["8k", "16k"]
    with pytest.raises(ValueError, match="mel has 63 bands but its axes describe 64"):
        plots.spectrogram_figure(mel[1:], EMBEDDED)


def test_the_cli_writes_the_same_picture_as_the_app(tmp_path):
    mel = torch.randn(EMBEDDED.n_mels, 120, generator=torch.Generator().manual_seed(0))
    cli._save_spectrogram(mel, EMBEDDED, tmp_path / "cli.png", "clip.mp4  hg", overwrite=False)
    plots.save_spectrogram(mel, EMBEDDED, tmp_path / "app.png", "clip.mp4  hg")
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "app.png").read_bytes()
    with pytest.raises(ValueError, match="output exists"):
        plots.save_spectrogram(mel, EMBEDDED, tmp_path / "app.png")
