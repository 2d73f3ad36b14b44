"""Reference data for MMAudio's Synchformer features and video reader, written from the official code.

Writes

* ``v2a_sampler/mmaudio/manifests/synchformer.json``: every state-dict key and shape of the official extractor
  (``mmaudio.ext.synchformer.Synchformer()``, the module ``FeaturesUtils`` loads ``synchformer_state_dict.pth``
  into) and its parameter count;
* ``tests/fixtures/mmaudio/synchformer_reduced.safetensors``: the official extractor with a reduced width and depth
  (``divided_224_16x4.yaml`` patched: everything else official, 224 px frames, 16 x 16 patches, 2-frame tubelets,
  16-frame windows) and random weights, run by the official ``FeaturesUtils.encode_video_with_sync`` on two clips
  of 36 frames (3 windows each, 4 frames left over). The input frames are not stored: they are a hash pattern of
  uint8 pixels (:func:`pattern`, exact integer arithmetic) normalised like the official ``sync_transform``; the
  fixture stores checksums of them;
* ``tests/fixtures/mmaudio/synchformer_frames.safetensors``: the official video reader (``av_utils.read_frames``
  and ``eval_utils.load_video``) fed with fake PyAV containers: for a set of frame-timestamp lists (constant,
  NTSC, low and variable frame rates) the source frame picked for every 8 fps and 25 fps frame and the final
  duration and frame counts (meta); and for frames of several sizes (:func:`pattern` pixels) the official
  Synchformer frames (bicubic resize of the short side to 224, centre crop, ``[-1, 1]``), stored as uint8 levels
  on a strided grid plus their full sums.

Run (see tools/mmaudio_ref_common.py for the set-up); the committed data was written with::

    /tmp/offenv/bin/python tools/mmaudio_ref_synchformer.py --official /tmp/mmaudio_official

(torch 2.14.1, torchvision 0.29.1, timm 1.0.31, einops, omegaconf, av 18.1; CPU, one thread). librosa and colorlog,
imported by official modules but unused here, get empty stand-ins when missing (:func:`stub_unused_imports`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import torch
from mmaudio_ref_common import half_exact, parse_args, save_fixture, shapes, write_manifest

#: The reduced extractor of the fixture (official names of ``divided_224_16x4.yaml``; the rest stays official).
REDUCED = {"EMBED_DIM": 16, "DEPTH": 2, "NUM_HEADS": 2}
WEIGHT_STD = 0.2  # random weights (the official init zeroes the 3-D patch embedding)
#: The tubelet embedding sums 3 * 2 * 16 * 16 inputs: its weights are scaled down by this power of two (exact in
#: float16) so that its tokens do not drown the attention and MLP updates (a fixture sensitive to every layer).
PATCH_WEIGHT_SCALE = 1 / 16
BATCH, FRAMES = 2, 36  # 3 windows of 16 frames with stride 8, 4 frames left over
PATTERN_SEED = 7
#: Frame sizes (H, W) for the transform references: upscaling, downscaling, odd crops, portrait and landscape.
TRANSFORM_SIZES = ((48, 64), (37, 250), (301, 230), (480, 270))
GRID_STRIDE = 3  # transform outputs are stored on every GRID_STRIDE-th row and column


#: Imported by official modules we load but unused by the code run here (the VAE's mel filterbank, log colours):
#: stand-ins are installed when they are missing.
UNUSED_IMPORTS = ("librosa", "librosa.filters", "colorlog")


def stub_unused_imports() -> None:
    """Put empty stand-ins for the missing :data:`UNUSED_IMPORTS` into ``sys.modules``."""

    class Stub(types.ModuleType):
        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    for name in UNUSED_IMPORTS:
        root = name.split(".")[0]
        if root not in sys.modules and importlib.util.find_spec(root) is None:
            sys.modules[root] = Stub(root)
        if name not in sys.modules and isinstance(sys.modules.get(root), Stub):
            sys.modules[name] = Stub(name)


def pattern(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Deterministic noise-like uint8 pixels (an integer hash of the flat index; identical on every platform)."""
    v = torch.arange(int(np.prod(shape)), dtype=torch.int64) * 2654435761 + seed * 97531
    v = v % 2**32
    v = v ^ (v >> 13)
    v = (v * 1274126177) % 2**32
    v = v ^ (v >> 16)
    return (v % 256).to(torch.uint8).view(shape)


@contextlib.contextmanager
def official_config(**vit: int):
    """Build official MotionFormers with ``VIT.<name>`` entries of ``divided_224_16x4.yaml`` replaced."""
    from mmaudio.ext.synchformer import motionformer

    real = motionformer.OmegaConf

    def load(path):
        cfg = real.load(path)
        for k, v in vit.items():
            cfg.VIT[k] = v
        return cfg

    motionformer.OmegaConf = SimpleNamespace(load=load)
    try:
        yield
    finally:
        motionformer.OmegaConf = real


def manifest() -> None:
    from mmaudio.ext.synchformer import Synchformer

    net = Synchformer()  # (cannot be built on the meta device: the official init calls .item())
    n_params = sum(p.numel() for p in net.parameters())
    entry = {"num_parameters": n_params, "keys": shapes(net)}
    print(f"synchformer: {len(entry['keys'])} keys, {n_params / 1e6:.1f} M parameters")
    write_manifest(
        "synchformer",
        "State-dict keys and shapes of the official Synchformer visual feature extractor "
        "(mmaudio.ext.synchformer.Synchformer(), divided_224_16x4.yaml), written by "
        "tools/mmaudio_ref_synchformer.py. The official loader keeps the 'vfeat_extractor*' entries of "
        "synchformer_state_dict.pth and loads them strictly.",
        {"synchformer": entry},
    )


def reduced_fixture() -> None:
    from mmaudio.ext.synchformer import Synchformer
    from mmaudio.model.utils.features_utils import FeaturesUtils

    with official_config(**REDUCED):
        net = Synchformer().eval()
    half_exact(net, WEIGHT_STD)
    with torch.no_grad():
        conv = net.vfeat_extractor.patch_embed_3d.proj.weight
        conv.copy_(conv.mul(PATCH_WEIGHT_SCALE).half().float())
    weights = {k: v.half() for k, v in net.state_dict().items()}
    pixels = pattern((BATCH, FRAMES, 3, 224, 224), PATTERN_SEED)
    frames = (pixels.to(torch.float32).mul_(1.0 / 255) - 0.5) / 0.5  # the official sync_transform's last steps
    with torch.no_grad():
        sync = FeaturesUtils.encode_video_with_sync(SimpleNamespace(synchformer=net), frames)
        windows = torch.stack([frames[:, i : i + 16] for i in (0, 8, 16)], dim=1)
        direct = net(windows[:1])  # Synchformer.forward on [B, S, T, C, H, W]
    tensors = {f"weights/{k}": v for k, v in weights.items()}
    tensors.update(sync=sync, forward_first=direct)
    meta = {
        "config": {"dim": 16, "depth": 2, "heads": 2},
        "official_overrides": REDUCED,
        "input": {"shape": [BATCH, FRAMES, 3, 224, 224], "pattern_seed": PATTERN_SEED,
                  "pixel_sum": int(pixels.sum()), "frames_sum": float(frames.double().sum())},
        "weight_std": WEIGHT_STD,
        "patch_weight_scale": PATCH_WEIGHT_SCALE,
    }  # fmt: skip
    print(f"reduced: sync {list(sync.shape)}, forward {list(direct.shape)}")
    save_fixture("synchformer_reduced", tensors, meta)


# -- the official video reader on fake containers --------------------------------------------------------------


class FakeFrame:
    def __init__(self, time: float, image: np.ndarray) -> None:
        self.time, self._image = time, image

    def to_ndarray(self, format: str) -> np.ndarray:  # noqa: A002 (PyAV's name)
        assert format == "rgb24"
        return self._image


class FakeContainer:
    """What ``av_utils.read_frames`` uses of a PyAV container: one video stream, one frame per packet."""

    def __init__(self, times: list[float], images, rate: Fraction) -> None:
        self.frames = [FakeFrame(t, images(i)) for i, t in enumerate(times)]
        self.streams = SimpleNamespace(video=[SimpleNamespace(guessed_rate=rate, thread_type=None)])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def demux(self, stream):
        for frame in self.frames:
            yield SimpleNamespace(decode=lambda f=frame: [f])


@contextlib.contextmanager
def fake_av(container: FakeContainer):
    from mmaudio.data import av_utils

    real = av_utils.av
    av_utils.av = SimpleNamespace(open=lambda path: container)
    try:
        yield
    finally:
        av_utils.av = real


def index_image(i: int) -> np.ndarray:
    """A 2 x 2 frame coding its index ``i`` (R = i % 256, G = i // 256)."""
    return np.broadcast_to(np.array([i % 256, i // 256, 0], np.uint8), (2, 2, 3)).copy()


def times_at(rate: Fraction, n: int) -> list[float]:
    """PyAV's ``frame.time`` of ``n`` frames at a constant ``rate`` (exact pts, then one rounding to float)."""
    return [float(Fraction(i) / rate) for i in range(n)]


def selection_cases() -> dict[str, dict]:
    rng = np.random.default_rng(3)
    vfr_ms = np.concatenate([[0], np.cumsum(rng.integers(15, 130, size=60))]).tolist()
    cases = {
        "25fps_8s_d8": (Fraction(25), times_at(Fraction(25), 200), 8.0),
        "25fps_10s_d8": (Fraction(25), times_at(Fraction(25), 250), 8.0),
        "ntsc_5s_d8": (Fraction(30000, 1001), times_at(Fraction(30000, 1001), 150), 8.0),
        "30fps_3s_d2.5": (Fraction(30), times_at(Fraction(30), 90), 2.5),
        "24fps_6s_d5": (Fraction(24), times_at(Fraction(24), 144), 5.0),
        "50fps_2s_d1.04": (Fraction(50), times_at(Fraction(50), 100), 1.04),
        "12fps_4s_d3.3": (Fraction(12), times_at(Fraction(12), 48), 3.3),
        "2fps_5s_d4": (Fraction(2), times_at(Fraction(2), 10), 4.0),
        "1fps_5s_d3": (Fraction(1), times_at(Fraction(1), 5), 3.0),
        "vfr_ms": (Fraction(25), [m / 1000 for m in vfr_ms], 3.3),
        "25fps_0.5s_d8": (Fraction(25), times_at(Fraction(25), 13), 8.0),
    }
    return {name: {"rate": [rate.numerator, rate.denominator], "times": t, "duration": d}
            for name, (rate, t, d) in cases.items()}  # fmt: skip


def frames_fixture() -> None:
    from mmaudio import eval_utils
    from mmaudio.data.av_utils import read_frames

    cases = selection_cases()
    for name, case in cases.items():
        rate = Fraction(*case["rate"])
        with fake_av(FakeContainer(case["times"], index_image, rate)):
            (clip, sync), _, _ = read_frames("fake", [8.0, 25.0], 0, case["duration"], need_all_frames=False)
            info = eval_utils.load_video("fake", case["duration"], load_all_frames=False)
        decode = lambda a: (a[:, 0, 0, 0].astype(int) + 256 * a[:, 0, 0, 1].astype(int)).tolist()  # noqa: E731
        case.update(clip_indices=decode(clip), sync_indices=decode(sync), final_duration=info.duration_sec,
                    clip_frames=info.clip_frames.shape[0], sync_frames=info.sync_frames.shape[0])  # fmt: skip
        print(f"{name}: {len(clip)} / {len(sync)} read, {case['clip_frames']} / {case['sync_frames']} kept, "
              f"duration {info.duration_sec}")  # fmt: skip

    tensors, sums = {}, {}
    for j, (h, w) in enumerate(TRANSFORM_SIZES):
        image = pattern((h, w, 3), 100 + j).numpy()
        with fake_av(FakeContainer([0.0], lambda i, im=image: im, Fraction(25))):
            info = eval_utils.load_video("fake", 0.04, load_all_frames=False)
        sync = info.sync_frames[0]  # [3, 224, 224] in [-1, 1]
        levels = (sync.double() * 0.5 + 0.5) * 255  # back to uint8 levels (exact up to float rounding)
        tensors[f"sync_{h}x{w}"] = levels[:, ::GRID_STRIDE, ::GRID_STRIDE].round().half()
        sums[f"{h}x{w}"] = float(sync.double().sum())
    meta = {
        "cases": cases,
        "transform": {"sizes": TRANSFORM_SIZES, "pattern_seed_base": 100, "grid_stride": GRID_STRIDE, "sums": sums},
    }
    save_fixture("synchformer_frames", tensors, meta)


if __name__ == "__main__":
    parse_args(__doc__.splitlines()[0])
    stub_unused_imports()
    torch.set_num_threads(1)
    manifest()
    reduced_fixture()
    frames_fixture()
