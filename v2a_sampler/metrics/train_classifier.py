"""Train the timbre classifier of the metrics on real synthetic audio and write its weights and config.

Data: clips of the world (:func:`~v2a_sampler.synth.make_clip`, default :class:`~v2a_sampler.synth.WorldConfig`:
background noise, off-screen sounds and overlapping events included) from disjoint seed ranges for training and
held-out evaluation; one example per audible event: the window at its onset, labelled with its class.
Augmentation: random onset jitter of up to ``jitter_s`` (whole 10 ms frames) and random gain of up to
``gain_db``. AdamW with a cosine learning-rate decay, seeded, on one CPU thread: 1.5-3 minutes, and the same
weights bit for bit on a given machine.

``python -m v2a_sampler.metrics.train_classifier [--out DIR]`` rebuilds the shipped
``v2a_sampler/assets/metrics/timbre_classifier.{safetensors,json}``; the JSON records the recipe and the held-out
accuracy measured right after training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..synth import CLASSES, make_clip
from .classifier import (
    CHECKPOINT_NAME,
    FeatureConfig,
    TimbreClassifier,
    TimbreNet,
    asset_dir,
    classify_onsets,
    cut_windows,
)
from .inputs import METRIC_SAMPLE_RATE, audible_events

__all__ = ["TrainRecipe", "build_examples", "evaluate_classifier", "main", "save_classifier", "train_classifier"]

#: Side of the rendered frames of training clips: the audio does not depend on it, so it is kept tiny (fast).
RENDER_SIZE = 16
#: log-magnitude units (nats) per dB: a gain of g dB adds ``g * NATS_PER_DB`` to a log-mel.
NATS_PER_DB = math.log(10.0) / 20.0


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines the trained weights."""

    seed: int = 0
    train_seed_start: int = 1_000_000  # training clips: seeds train_seed_start + [0, train_clips)
    train_clips: int = 800
    heldout_seed_start: int = 2_000_000  # held-out clips, disjoint from the training seeds
    heldout_clips: int = 200
    duration: float = 5.0  # seconds per clip
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    jitter_s: float = 0.03  # onset jitter of training windows (rounded to whole frames)
    gain_db: float = 6.0  # random gain of training windows, uniform in ±gain_db
    channels: tuple[int, ...] = (8, 16, 32)
    embed_dim: int = 64
    threads: int = 1  # torch CPU threads while training (one is fastest on a shared machine, and reproducible)


def _sounding() -> tuple[tuple[int, ...], tuple[str, ...]]:
    sounding = [c for c in CLASSES if c.timbre is not None]
    return tuple(c.id for c in sounding), tuple(c.name for c in sounding)


def build_examples(
    seeds: Sequence[int], features: FeatureConfig, duration: float, jitter_frames: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw log-mels ``[E, n_mels, frames + 2 * jitter_frames]`` of the windows at every audible event, and class ids.

    Each window is widened by ``jitter_frames`` hops on both sides, so a crop at offset ``jitter_frames`` is the
    unjittered window.
    """
    raw = dataclasses.replace(features, mean=0.0, std=1.0)
    margin = jitter_frames * features.hop
    length = features.window_samples + 2 * margin
    mels, labels = [], []
    for seed in seeds:
        clip = make_clip(seed, duration=duration, size=RENDER_SIZE, sample_rate=features.sample_rate)
        times, classes = audible_events(clip.events)
        if len(times) == 0:
            continue
        starts = [round((t - features.pre_s) * features.sample_rate) - margin for t in times]
        windows = cut_windows(torch.from_numpy(clip.audio), starts, length)
        mels.append(raw.features(windows))
        labels.append(torch.from_numpy(classes))
    return torch.cat(mels), torch.cat(labels)


def train_classifier(recipe: TrainRecipe = TrainRecipe(), log: bool = True) -> TimbreClassifier:
    """Train a :class:`TimbreClassifier` from scratch following ``recipe`` (deterministic on a given machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        return _train(recipe, log)
    finally:
        torch.set_num_threads(threads)


def _train(recipe: TrainRecipe, log: bool) -> TimbreClassifier:
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    class_ids, class_names = _sounding()
    features = FeatureConfig()
    jitter = round(recipe.jitter_s * features.sample_rate / features.hop)
    seeds = range(recipe.train_seed_start, recipe.train_seed_start + recipe.train_clips)
    mels, ids = build_examples(seeds, features, recipe.duration, jitter)
    labels = torch.as_tensor([class_ids.index(int(i)) for i in ids])
    centre = mels[:, :, jitter : jitter + features.num_frames]
    features = dataclasses.replace(features, mean=float(centre.mean()), std=float(centre.std()))
    if log:
        counts = torch.bincount(labels, minlength=len(class_ids)).tolist()
        print(f"{len(labels)} training windows {dict(zip(class_names, counts, strict=True))}", flush=True)
        print(f"data: {time.perf_counter() - t0:.1f} s", flush=True)

    net = TimbreNet(len(class_ids), features.num_frames, recipe.channels, recipe.embed_dim)
    optimiser = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, recipe.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(recipe.seed)
    frames = features.num_frames
    for epoch in range(recipe.epochs):
        net.train()
        order = torch.randperm(len(labels), generator=generator)
        total, correct = 0.0, 0
        for batch in order.split(recipe.batch_size):
            offsets = rng.integers(0, 2 * jitter + 1, size=len(batch))
            index = torch.as_tensor(offsets)[:, None] + torch.arange(frames)[None, :]
            x = torch.gather(mels[batch], 2, index[:, None, :].expand(-1, mels.shape[1], -1))
            gains = torch.as_tensor(rng.uniform(-recipe.gain_db, recipe.gain_db, size=len(batch)), dtype=torch.float32)
            x = torch.clamp(x + gains[:, None, None] * NATS_PER_DB, min=math.log(features.floor)) - features.mean
            logits = net(x / features.std)
            loss = F.cross_entropy(logits, labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(1) == labels[batch]).sum())
        if log:
            print(
                f"epoch {epoch + 1}/{recipe.epochs}: loss {total / len(labels):.4f}, "
                f"train acc {correct / len(labels):.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    net.eval()
    metadata = {"recipe": dataclasses.asdict(recipe), "train_seconds": round(time.perf_counter() - t0, 1)}
    return TimbreClassifier(net, features, class_ids, class_names, metadata)


def evaluate_classifier(
    classifier: TimbreClassifier, seeds: Sequence[int], duration: float = TrainRecipe.duration
) -> dict[str, Any]:
    """Accuracy over the audible events of clips ``seeds`` (through :func:`classify_onsets`), overall and per class."""
    truth, predicted = [], []
    for seed in seeds:
        clip = make_clip(seed, duration=duration, size=RENDER_SIZE, sample_rate=METRIC_SAMPLE_RATE)
        times, classes = audible_events(clip.events)
        truth.append(classes)
        predicted.append(classify_onsets(clip.audio, clip.sample_rate, times.tolist(), classifier))
    y, p = np.concatenate(truth), np.concatenate(predicted)
    per_class = {
        name: float((p[y == cid] == cid).mean()) if (y == cid).any() else None
        for cid, name in zip(classifier.class_ids, classifier.class_names, strict=True)
    }
    return {"accuracy": float((p == y).mean()) if len(y) else None, "events": len(y), "per_class": per_class}


def save_classifier(classifier: TimbreClassifier, out_dir: str | Path, name: str = CHECKPOINT_NAME) -> Path:
    """Write ``<out_dir>/<name>.safetensors`` and ``<name>.json``; returns the stem path."""
    stem = Path(out_dir) / name
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in classifier.net.state_dict().items()}
    save_file(state, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(classifier.config_dict(), indent=2) + "\n")
    return stem


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: train with the default recipe, evaluate on the held-out clips, write the weights and config."""
    parser = argparse.ArgumentParser(
        prog="python -m v2a_sampler.metrics.train_classifier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=asset_dir(), help="output folder (default: the shipped assets)")
    parser.add_argument("--epochs", type=int, default=TrainRecipe.epochs)
    parser.add_argument("--train-clips", type=int, default=TrainRecipe.train_clips)
    parser.add_argument("--heldout-clips", type=int, default=TrainRecipe.heldout_clips)
    parser.add_argument("--seed", type=int, default=TrainRecipe.seed)
    args = parser.parse_args(argv)
    recipe = TrainRecipe(
        seed=args.seed, epochs=args.epochs, train_clips=args.train_clips, heldout_clips=args.heldout_clips
    )
    torch.set_num_threads(recipe.threads)
    classifier = train_classifier(recipe)
    heldout = range(recipe.heldout_seed_start, recipe.heldout_seed_start + recipe.heldout_clips)
    classifier.metadata["heldout"] = {
        "seeds": [heldout.start, heldout.stop],
        **evaluate_classifier(classifier, heldout, recipe.duration),
    }
    stem = save_classifier(classifier, args.out)
    print(json.dumps(classifier.metadata["heldout"], indent=2))
    print(f"wrote {stem}.safetensors and {stem}.json")


if __name__ == "__main__":
    main()
