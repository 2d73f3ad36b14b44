"""Reference data for MMAudio's CLIP features and CLIP frames, written from the official code.

Writes

* ``tests/fixtures/mmaudio/clip_tiny.safetensors``: a tiny open_clip ``CLIP`` (same class as DFN5B ViT-H-14-384,
  384 px input, quick GELU; width 16, one layer per tower) with random weights, run through the official
  ``FeaturesUtils.encode_video_with_clip`` and ``FeaturesUtils.encode_text`` (the model patched by the official
  ``patch_clip``, tokenizer ``open_clip.get_tokenizer('ViT-H-14-378-quickgelu')``). The token-embedding table
  (49408 rows) is stored only at the rows the prompts use (``token_ids`` / ``token_rows``); the other rows do not
  affect the outputs. The input frames are :func:`mmaudio_ref_synchformer.pattern` pixels (not stored);
* ``tests/fixtures/mmaudio/clip_frames.safetensors``: the official CLIP frames of ``eval_utils.load_video``
  (bicubic squash to 384 x 384, ``[0, 1]``) for frames of several sizes (pattern pixels, fake PyAV containers),
  as uint8 levels on a strided grid plus their full sums.

Run (see tools/mmaudio_ref_common.py for the set-up); the committed data was written with::

    /tmp/offenv/bin/python tools/mmaudio_ref_clip.py --official /tmp/mmaudio_official

(torch 2.14.1, torchvision 0.29.1, open_clip_torch 3.3.0; CPU, one thread; librosa/colorlog stand-ins as in
tools/mmaudio_ref_synchformer.py).
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import torch
from mmaudio_ref_common import half_exact, parse_args, save_fixture
from mmaudio_ref_synchformer import FakeContainer, fake_av, pattern, stub_unused_imports

#: The tiny model (open_clip ``CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu)``).
TINY = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 384, "patch_size": 32, "width": 16, "head_width": 8, "layers": 1},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TOKENIZER = "ViT-H-14-378-quickgelu"  # the official FeaturesUtils tokenizer
PROMPTS = ["a dog barking", "", "rain on a tin roof, distant thunder. " * 12]  # empty; longer than 77 tokens
WEIGHT_STD = 0.2
BATCH, FRAMES, PATTERN_SEED = 2, 3, 11
TRANSFORM_SIZES = ((48, 64), (37, 250), (301, 230), (480, 270), (720, 406))
GRID_STRIDE = 4


def tiny_fixture() -> None:
    import open_clip
    from mmaudio.model.utils.features_utils import FeaturesUtils, patch_clip
    from torchvision.transforms import Normalize

    model = open_clip.model.CLIP(**TINY).eval()
    weights = half_exact(model, WEIGHT_STD)
    model = patch_clip(model)
    tokenizer = open_clip.get_tokenizer(TOKENIZER)
    utils = SimpleNamespace(
        clip_model=model,
        clip_preprocess=Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
        tokenizer=tokenizer,
        device=torch.device("cpu"),
    )
    pixels = pattern((BATCH, FRAMES, 3, 384, 384), PATTERN_SEED)
    frames = pixels.to(torch.float32).mul_(1.0 / 255)  # the official clip_transform's last step
    with torch.no_grad():
        image = FeaturesUtils.encode_video_with_clip(utils, frames)
        text = FeaturesUtils.encode_text(utils, PROMPTS)
    tokens = tokenizer(PROMPTS)
    used = torch.unique(tokens)
    table = weights.pop("token_embedding.weight")
    tensors = {f"weights/{k}": v for k, v in weights.items()}
    tensors.update(token_ids=used.float(), token_rows=table[used], tokens=tokens.float(), image=image, text=text)
    meta = {
        "config": TINY,
        "tokenizer": TOKENIZER,
        "prompts": PROMPTS,
        "input": {"shape": [BATCH, FRAMES, 3, 384, 384], "pattern_seed": PATTERN_SEED, "pixel_sum": int(pixels.sum())},
        "weight_std": WEIGHT_STD,
    }
    print(f"tiny clip: image {list(image.shape)}, text {list(text.shape)}, {len(used)} token rows")
    save_fixture("clip_tiny", tensors, meta)


def frames_fixture() -> None:
    from mmaudio import eval_utils

    tensors, sums = {}, {}
    times = [i / 25 for i in range(7)]  # 0.24 s of one repeated image: 2 CLIP frames kept at duration 0.2
    for j, (h, w) in enumerate(TRANSFORM_SIZES):
        image = pattern((h, w, 3), 200 + j).numpy()
        with fake_av(FakeContainer(times, lambda i, im=image: im, Fraction(25))):
            info = eval_utils.load_video("fake", 0.2, load_all_frames=False)
        clip = info.clip_frames[0]  # [3, 384, 384] in [0, 1]
        tensors[f"clip_{h}x{w}"] = (clip.double() * 255)[:, ::GRID_STRIDE, ::GRID_STRIDE].round().half()
        sums[f"{h}x{w}"] = float(clip.double().sum())
    meta = {"transform": {"sizes": TRANSFORM_SIZES, "pattern_seed_base": 200, "grid_stride": GRID_STRIDE, "sums": sums}}
    save_fixture("clip_frames", tensors, meta)


if __name__ == "__main__":
    parse_args(__doc__.splitlines()[0])
    stub_unused_imports()
    torch.set_num_threads(1)
    tiny_fixture()
    frames_fixture()
