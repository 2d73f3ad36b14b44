"""``v2a-app``: try guidance on a video in the browser, one spec or two to four side by side.

    v2a-app                                  # http://127.0.0.1:7860, the embedded model
    python -m v2a_sampler.frontends.app --port 8000 --steps 12

A local `Gradio <https://www.gradio.app>`_ app (the ``[app]`` extra) on the pipeline contract the CLI uses:
:func:`~v2a_sampler.pipelines.loader.load_pipeline`, :meth:`~v2a_sampler.pipelines.base.V2APipeline.plan`,
:meth:`~v2a_sampler.pipelines.base.V2APipeline.load_video` and
:meth:`~v2a_sampler.pipelines.base.V2APipeline.generate`; the spectrograms are
:func:`v2a_sampler.frontends.plots.save_spectrogram`'s, as with ``v2a-sample --spectrogram``.

* Generate: a video, a model (the embedded one; official MMAudio variants whose files are in the local Hugging Face
  cache), a guidance spec (a preset list, and a free field showing the branch coefficients and NFE of
  ``v2a-sample --explain`` as one types), solver, steps, seed, duration and, for models with a text condition,
  prompts. Out come the video muxed with the new soundtrack, the WAV, the spectrogram (seconds, Hz) and one line:
  guidance, solver, NFE, seconds.
* Compare: two to four specs on the same video and seed, side by side. The columns share the loaded model and the
  video frames (read once); each spec is its own sampler run (a run plan holds one guidance), run one after another.
* Requests go through one queue with one worker: the model is loaded once (one model in memory at a time) and runs
  never overlap. Bad input (no video, not a video, longer than ``--max-seconds``, a spec that does not parse, a
  model that is not in the cache) is one ``error:`` line in the page.
* Offline: analytics off, the hub in offline mode, only local assets (Gradio's bundled fonts); uploads and outputs
  live in one temporary folder that is removed when the app exits.
"""

from __future__ import annotations

import atexit
import gc
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ..core import guidance as G
from ..core import solvers
from ..errors import error_line
from ..media import io
from ..pipelines.base import V2APipeline
from ..pipelines.config import MMAUDIO_PREFIX, NO_BAD_MODEL, RunConfig
from .common import EXIT_RUNTIME, EXIT_USAGE, MUX_SUFFIX
from .plots import save_spectrogram

#: Where the app listens by default (this machine only) and on which port.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Longest stretch of video the app generates for (seconds): a longer video needs a Duration at most this long.
MAX_VIDEO_SECONDS = 30.0
#: Largest upload the server accepts.
MAX_UPLOAD = "200mb"
#: Guidance specs of compare mode: at least this many and at most that many columns.
COMPARE_MIN, COMPARE_MAX = 2, 4
#: Top of the page's steps slider (``--steps`` may set a higher default).
STEPS_MAX = 100
#: Requests waiting in the queue beyond the running one before new ones are refused.
QUEUE_SIZE = 16
#: Output folders (one per request) kept; older ones are deleted as new requests arrive.
KEEP_REQUESTS = 16
#: Gradio's own cache of served files: swept every ``CACHE_SWEEP_S`` seconds of files older than ``CACHE_AGE_S``.
CACHE_SWEEP_S, CACHE_AGE_S = 600, 3600
#: Torch threads for the embedded model (small networks: more threads only add overhead on a shared CPU).
EMBEDDED_THREADS = 1
#: Model choice of the embedded model, and bad-model choice "the model's own" (embedded: its ``bad/``; MMAudio: none).
EMBEDDED = "embedded"
EMBEDDED_AMG = "embedded-amg"
DEFAULT_BAD = "default"
#: Heights (pixels) of the uploaded video and of the generated videos in the page.
IN_VIDEO_HEIGHT, OUT_VIDEO_HEIGHT = 260, 300
#: Buttons on the spectrograms (no "share": that is for Hugging Face Spaces).
IMAGE_BUTTONS = ["download", "fullscreen"]
#: Figure size (inches) of the spectrograms in the page.
PAGE_FIGSIZE = (6.0, 2.6)
#: The demo clip of a source checkout (absent from an installed wheel: then the app shows no example).
DEMO_CLIP = Path(__file__).resolve().parents[2] / "examples" / "assets" / "demo_clip.mp4"
#: Environment the app sets before Gradio or the hub client load: no analytics, no hub downloads.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
#: Prefix of every user-facing failure in the page.
ERROR_PREFIX = "error: "


class AppError(ValueError):
    """A request that cannot run (one line, shown in the page)."""


# ---------------------------------------------------------------------------------------------------------------
# Models on offer
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """A model the app offers: ``value`` is ``"embedded"`` or ``mmaudio:VARIANT``; ``missing`` lists the files the
    local hub cache lacks (empty: it loads offline)."""

    value: str
    missing: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return not self.missing

    @property
    def label(self) -> str:
        if self.value == EMBEDDED:
            return "embedded (V2AFlow + bad model)"
        if self.value == EMBEDDED_AMG:
            return "embedded-amg (V2AFlow trained with AMG)"
        return self.value + ("" if self.available else "  (not in the local cache)")

    @property
    def is_mmaudio(self) -> bool:
        return self.value.startswith(MMAUDIO_PREFIX)

    @property
    def variant(self) -> str:
        return self.value.removeprefix(MMAUDIO_PREFIX)

    def pipeline_class(self) -> type[V2APipeline]:
        """The pipeline class this choice loads (its class facts: conditions, default guidance, steps)."""
        from ..pipelines.embedded import Pipeline
        from ..pipelines.mmaudio import MMAudioPipeline

        return MMAudioPipeline if self.is_mmaudio else Pipeline

    @property
    def default_guidance(self) -> str:
        """The guidance a run with this model names when it names none (read from its config, not its weights)."""
        return self.default_guidance_with(DEFAULT_BAD)

    def default_guidance_with(self, bad: str) -> str:
        """The default guidance with the bad-model choice ``bad`` (a value of :func:`bad_model_choices`): ``none``
        turns the embedded model's ``hg`` into ``cfg``."""
        from ..pipelines.loader import default_guidance

        model = None if self.value == EMBEDDED else self.value
        bad_model = None if bad == DEFAULT_BAD or bad.startswith(MMAUDIO_PREFIX) else bad
        return default_guidance(RunConfig(model=model, bad_model=bad_model))

    def message(self) -> str:
        """What the page says under the model selector."""
        if self.available:
            cls = self.pipeline_class()
            text = ", text prompts" if "text" in cls.conditions else ""
            return f"{self.value}: video{text}; default guidance `{self.default_guidance}`."
        return (
            f"{self.value} is not in the local Hugging Face cache (missing {', '.join(self.missing)}). "
            f"The app runs offline: download it once with `v2a-sample video.mp4 --model {self.value}` where the "
            "hub can be reached, then restart the app."
        )


def model_choices(cache_dir: str | os.PathLike | None = None) -> list[ModelChoice]:
    """The embedded model, then every official MMAudio variant with the files its cache entry lacks."""
    from ..mmaudio.hub import missing_from_cache
    from ..mmaudio.network import VARIANTS

    out = [ModelChoice(EMBEDDED), ModelChoice(EMBEDDED_AMG)]
    for variant in VARIANTS:
        out.append(ModelChoice(MMAUDIO_PREFIX + variant, tuple(missing_from_cache(variant, cache_dir))))
    return out


def bad_model_choices(model: ModelChoice, models: Sequence[ModelChoice]) -> list[tuple[str, str]]:
    """``(label, value)`` of the bad models that fit ``model``: the embedded model's own or none; for MMAudio none or
    another variant with the same VAE (the same latent space)."""
    if model.value == EMBEDDED_AMG:
        return [("none (sampled with CFG)", DEFAULT_BAD)]
    if not model.is_mmaudio:
        return [("the model's own (bad/)", DEFAULT_BAD), ("none", NO_BAD_MODEL)]
    from ..mmaudio.hub import files_for

    vae = files_for(model.variant)["vae"]
    out = [("none", DEFAULT_BAD)]
    for m in models:
        if m.is_mmaudio and m.value != model.value and files_for(m.variant)["vae"] == vae:
            out.append((m.label, m.value))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Guidance: presets and the live explanation
# ---------------------------------------------------------------------------------------------------------------


def guidance_presets() -> list[str]:
    """The registered presets whose bare name is a spec (paper defaults), then the shipped models' defaults."""
    from ..pipelines.mmaudio import MMAudioPipeline

    out = []
    for name in G.PRESETS:
        try:
            G.parse(name)
        except ValueError:
            continue  # needs arguments (multi_cfg)
        out.append(name)
    defaults = (ModelChoice(EMBEDDED).default_guidance, ModelChoice(EMBEDDED_AMG).default_guidance,
                MMAudioPipeline.default_guidance)  # fmt: skip
    for default in defaults:
        if default not in out:
            out.append(default)
    return out


def explain(spec: str, solver: str | None = None, steps: int | None = None) -> str:
    """Markdown of ``v2a-sample --explain``: the spec's branch coefficients and NFE per step (and per clip for a
    solver and step count); one ``error:`` line for a spec that does not parse."""
    spec = (spec or "").strip()
    if not spec:
        return f"{ERROR_PREFIX}enter a guidance spec, e.g. `hg` or `cfg(4.5)`"
    try:
        g = G.parse(spec)
        stages = solvers.get_solver(solver).stages(int(steps)) if solver and steps else None
    except ValueError as e:
        return ERROR_PREFIX + _md(error_line(e))
    interval = isinstance(g, G.Interval)
    head = f"**{_md(g.spec())}**: {g.nfe_per_step} NFE/step"
    if stages is not None:
        bound = "at most " if interval else ""
        head += f" × {stages} stages = {bound}**{g.nfe_per_step * stages} NFE** per clip"
    rows = ["| branch | coefficient |", "|---|---:|"]
    rows += [f"| {_md(key)} | {c:+.6g} |" for key, c in g.coefficients().items()]
    tail = f"\n\nOutside noise levels [{g.lo:g}, {g.hi:g}]: {_md(g.fallback.spec())}" if interval else ""
    return head + "\n\n" + "\n".join(rows) + tail


def _md(text: str) -> str:
    """``text`` with Markdown's special characters escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>])", r"\\\1", text)


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a user asked for besides the video and the guidance specs."""

    model: str = EMBEDDED
    bad_model: str = DEFAULT_BAD
    solver: str | None = None
    steps: int | None = None
    seed: int = 0
    duration: float | None = None
    prompt: str | None = None
    negative_prompt: str | None = None

    def config(self, guidance: str) -> RunConfig:
        """The run configuration of one spec (raises :class:`~v2a_sampler.pipelines.config.ConfigError`)."""
        return RunConfig(
            model=None if self.model == EMBEDDED else self.model,
            bad_model=None if self.bad_model == DEFAULT_BAD else self.bad_model,
            guidance=guidance,
            solver=self.solver,
            steps=self.steps,
            seed=self.seed,
            duration=self.duration,
        )


@dataclass(frozen=True)
class Result:
    """One generated soundtrack: the muxed video, the WAV, the spectrogram PNG and the summary line."""

    spec: str
    video: Path
    wav: Path
    spectrogram: Path
    nfe: int
    seconds: float
    line: str


Progress = Callable[[int, int, str], None]


class Studio:
    """The app's engine, independent of Gradio: one pipeline loaded at a time, one run at a time.

    ``workdir`` holds one output folder per request (the newest :data:`KEEP_REQUESTS` are kept).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        max_seconds: float = MAX_VIDEO_SECONDS,
        threads: int | None = None,
        models: Sequence[ModelChoice] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.max_seconds = float(max_seconds)
        self.threads = threads
        self.models = list(models) if models is not None else model_choices()
        self._lock = threading.Lock()
        self._pipe: V2APipeline | None = None
        self._key: tuple[str, str] | None = None
        self._requests = 0
        self._default_threads = torch.get_num_threads()

    # -- checks -------------------------------------------------------------------------------------------------
    def model(self, value: str) -> ModelChoice:
        for m in self.models:
            if m.value == value:
                return m
        raise AppError(f"unknown model {value!r}; choose one of {', '.join(m.value for m in self.models)}")

    def check_video(self, video: str | os.PathLike | None, duration: float | None) -> float:
        """The seconds of ``video`` a request covers (its ``duration``, else the whole video); raises one line for
        no video, a file that is not a readable video, a duration past its end, or more than ``max_seconds``."""
        if video is None or not str(video):
            raise AppError("upload a video first (or pick the demo clip)")
        try:
            info = io.probe_video(video)
        except io.V2AInputError as e:  # not a video, no frames, unknown codec ...: named by its file name
            raise AppError(str(e).replace(str(video), Path(video).name)) from None
        if duration is not None:
            if duration > info.duration + 1e-3:
                raise AppError(f"duration {duration:g} s is past the end of the video ({info.duration:.2f} s)")
            span = duration
        else:
            span = info.duration
        if span > self.max_seconds:
            raise AppError(
                f"the video is {info.duration:.1f} s long; this app generates at most {self.max_seconds:g} s: "
                f"set Duration to {self.max_seconds:g} or less to use its start"
            )
        return span

    def check_specs(self, specs: Sequence[str | None], request: Request) -> list[tuple[str, RunConfig]]:
        """Non-empty specs with their run configurations; a bad spec fails naming its column when there are
        several."""
        given = [(i, s.strip()) for i, s in enumerate(specs) if s and s.strip()]
        if not given:
            raise AppError("enter a guidance spec, e.g. hg or cfg(4.5)")
        out = []
        for i, spec in given:
            try:
                out.append((spec, request.config(spec)))
            except ValueError as e:
                where = f"spec {i + 1}: " if len(specs) > 1 else ""
                raise AppError(where + error_line(e)) from None
        return out

    # -- the pipeline -------------------------------------------------------------------------------------------
    def pipeline(self, config: RunConfig, model: ModelChoice) -> tuple[V2APipeline, float]:
        """The pipeline of ``config`` and the seconds spent loading it (0 when it was already loaded). Call with
        the run lock held; a different model replaces the loaded one (never two in memory)."""
        from ..pipelines.loader import load_pipeline

        key = (config.model or EMBEDDED, config.bad_model or DEFAULT_BAD)
        if key == self._key and self._pipe is not None:
            return self._pipe, 0.0
        if not model.available:
            raise AppError(model.message())
        if config.bad_model and config.bad_model.startswith(MMAUDIO_PREFIX):
            bad = self.model(config.bad_model)
            if not bad.available:
                raise AppError(bad.message())
        self._pipe, self._key = None, None
        gc.collect()
        t0 = time.perf_counter()
        self._pipe = load_pipeline(config)
        self._key = key
        return self._pipe, time.perf_counter() - t0

    # -- generation ---------------------------------------------------------------------------------------------
    def run(
        self,
        video: str | os.PathLike | None,
        specs: Sequence[str | None],
        request: Request,
        progress: Progress | None = None,
    ) -> list[Result]:
        """One soundtrack per non-empty spec for the same video, seed and settings (the compare columns, or one).

        Checks everything it can before loading or sampling; raises :class:`AppError` (or the pipeline's one-line
        ``ValueError`` / ``RuntimeError``) for a request that cannot run.
        """
        model = self.model(request.model)
        runs = self.check_specs(specs, request)
        prompts = {"prompt": request.prompt or None, "negative_prompt": request.negative_prompt or None}
        if any(prompts.values()) and "text" not in model.pipeline_class().conditions:
            raise AppError(f"{model.value} has no text condition: prompts need one (an MMAudio model)")
        self.check_video(video, request.duration)
        with self._lock:
            threads = self.threads or (EMBEDDED_THREADS if not model.is_mmaudio else self._default_threads)
            torch.set_num_threads(threads)
            pipe, load_s = self.pipeline(runs[0][1], model)
            plans = []
            for spec, config in runs:
                try:
                    plans.append((spec, pipe.plan(config)))
                except ValueError as e:
                    where = f"spec {spec!r}: " if len(runs) > 1 else ""
                    raise AppError(where + error_line(e)) from None
            folder = self._request_folder()
            frames, covered = pipe.load_video(video, request.duration)  # read once, shared by every column
            total = sum(plan.stages for _, plan in plans)
            done = 0
            results = []
            for k, (spec, plan) in enumerate(plans):
                t0 = time.perf_counter()

                def tick(stages_done: int, _stages: int, spec: str = spec, before: int = done) -> None:
                    if progress is not None:  # solver stages over every column (Heun's two per step included)
                        progress(before + stages_done, total, spec)

                audio = pipe.generate(frames, plan, seed=request.seed, duration=covered, progress=tick, **prompts)
                done += plan.stages
                stem = f"{Path(video).stem}_{k + 1}_{_slug(plan.guidance.spec())}"
                wav = audio.save(folder / f"{stem}.wav")
                mp4 = audio.mux(video, folder / f"{stem}{MUX_SUFFIX}.mp4")
                png = folder / f"{stem}.png"
                save_spectrogram(audio.mel, pipe.mel_axes, png, plan.guidance.spec(), figsize=PAGE_FIGSIZE)
                secs = time.perf_counter() - t0
                line = f"{plan.describe()} · NFE {audio.info['nfe']} · {secs:.1f} s"
                if k == 0 and load_s:
                    line += f" (+{load_s:.2f} s loading the model)"
                results.append(Result(plan.guidance.spec(), mp4, wav, png, audio.info["nfe"], secs, line))
        return results

    def _request_folder(self) -> Path:
        self._requests += 1
        folder = self.workdir / f"request-{self._requests:05d}"
        folder.mkdir()
        old = sorted(p for p in self.workdir.glob("request-*") if p.is_dir())[:-KEEP_REQUESTS]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return folder


def _slug(spec: str) -> str:
    """A file-name-safe form of a spec: ``hg(2.7,2.5,1.2)`` -> ``hg_2.7_2.5_1.2``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", spec).strip("_") or "guidance"


def error_text(e: BaseException) -> str:
    """The page's one line for a failed request."""
    return ERROR_PREFIX + error_line(e)


# ---------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------

CSS = """
.v2a-line textarea { font-size: 0.9em; }
"""


def build_app(studio: Studio, steps: int | None = None, demo_clip: Path | None = DEMO_CLIP) -> Any:
    """The Gradio ``Blocks`` of the app (not launched)."""
    import gradio as gr

    models = studio.models
    first = models[0]
    presets = guidance_presets()
    solver_names = list(solvers.SOLVERS)
    cls = first.pipeline_class()
    first_guidance = first.default_guidance
    default_steps = steps or cls.default_steps

    def request(model, bad, solver, n_steps, seed, duration, prompt, negative) -> Request:
        if seed is None or seed != int(seed):
            raise AppError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")  # RunConfig checks the range
        if duration is not None and not duration >= 0:
            raise AppError(f"duration must be a positive number of seconds (0: the whole video), got {duration:g}")
        duration = duration or None  # 0 or empty: the whole video
        return Request(model, bad or DEFAULT_BAD, solver, int(n_steps), int(seed), duration, prompt, negative)

    track = gr.Progress()  # Gradio passes each run its own tracker through this default

    def gradio_progress(progress: Any) -> Progress:
        return lambda done, total, spec: progress((done, total), desc=f"{spec}: solver stages", unit="stages")

    def on_model(value):
        m = studio.model(value)
        c = m.pipeline_class()
        text = "text" in c.conditions
        return (
            m.message(),
            gr.update(choices=bad_model_choices(m, models), value=DEFAULT_BAD),
            gr.update(visible=text),
            gr.update(visible=text),
            m.default_guidance,
            m.default_guidance,
        )

    def generate(video, spec, model, bad, solver, n_steps, seed, duration, prompt, negative, progress=track):
        try:
            req = request(model, bad, solver, n_steps, seed, duration, prompt, negative)
            (r,) = studio.run(video, [spec], req, gradio_progress(progress))
        except Exception as e:  # every failure is one line in the page
            _log(e)
            return error_text(e), None, None, None
        return r.line, str(r.video), str(r.spectrogram), str(r.wav)

    def compare(video, *args, progress=track):
        specs, (model, bad, solver, n_steps, seed, duration, prompt, negative) = args[:COMPARE_MAX], args[COMPARE_MAX:]
        empty = [None] * (4 * COMPARE_MAX)
        try:
            given = [s for s in specs if s and s.strip()]
            if not COMPARE_MIN <= len(given) <= COMPARE_MAX:
                raise AppError(f"compare needs {COMPARE_MIN} to {COMPARE_MAX} guidance specs, got {len(given)}")
            req = request(model, bad, solver, n_steps, seed, duration, prompt, negative)
            results = studio.run(video, specs, req, gradio_progress(progress))
        except Exception as e:
            _log(e)
            return [error_text(e), *empty, *[gr.update() for _ in range(COMPARE_MAX)]]
        cells: list[Any] = []
        for k in range(COMPARE_MAX):
            r = results[k] if k < len(results) else None
            cells += [f"### {_md(r.spec)}" if r else "", str(r.video) if r else None,
                      str(r.spectrogram) if r else None, r.line if r else ""]  # fmt: skip
        shown = [gr.update(visible=k < len(results)) for k in range(COMPARE_MAX)]
        total = sum(r.seconds for r in results)
        summary = f"{len(results)} specs, seed {req.seed}, {sum(r.nfe for r in results)} NFE in {total:.1f} s"
        return [summary, *cells, *shown]

    def explain_compare(*args):
        specs, (solver, n_steps) = args[:COMPARE_MAX], args[COMPARE_MAX:]
        lines = []
        for i, spec in enumerate(specs):
            if spec and spec.strip():
                head = explain(spec, solver, n_steps).split("\n\n")[0]
                lines.append(f"{i + 1}. {head}")
        return "\n".join(lines) or f"{ERROR_PREFIX}enter {COMPARE_MIN} to {COMPARE_MAX} guidance specs"

    with gr.Blocks(title="v2a-sampler", analytics_enabled=False, delete_cache=(CACHE_SWEEP_S, CACHE_AGE_S)) as demo:
        gr.Markdown(
            "## v2a-sampler: guidance for video-to-audio\nUpload a video (or take the demo clip), pick a guidance "
            "and generate; **Compare** runs up to four guidances on the same video and seed side by side."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video-in", height=IN_VIDEO_HEIGHT)
                if demo_clip is not None and Path(demo_clip).is_file():
                    gr.Examples([[str(demo_clip)]], inputs=[video], label="Demo clip", elem_id="examples")
            with gr.Column(scale=1):
                model = gr.Dropdown([(m.label, m.value) for m in models], value=first.value, label="Model",
                                    elem_id="model")  # fmt: skip
                model_note = gr.Markdown(first.message(), elem_id="model-note")
                bad = gr.Dropdown(bad_model_choices(first, models), value=DEFAULT_BAD, label="Bad model",
                                  elem_id="bad-model")  # fmt: skip
                with gr.Row():
                    solver = gr.Dropdown(solver_names, value=cls.default_solver, label="Solver", elem_id="solver")
                    n_steps = gr.Slider(1, max(STEPS_MAX, default_steps), value=default_steps, step=1, label="Steps",
                                        elem_id="steps")  # fmt: skip
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="seed")
                    duration = gr.Number(0, minimum=0, label="Duration (s; 0: the whole video)",
                                         elem_id="duration")  # fmt: skip
                text = "text" in cls.conditions
                prompt = gr.Textbox(label="Prompt", visible=text, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", visible=text, elem_id="negative-prompt")
        settings = [model, bad, solver, n_steps, seed, duration, prompt, negative]
        with gr.Tabs():
            with gr.Tab("Generate", id="generate-tab", elem_id="generate-panel"):
                with gr.Row():
                    preset = gr.Dropdown(presets, value=first_guidance, label="Preset", elem_id="preset",
                                         scale=1)  # fmt: skip
                    spec = gr.Textbox(first_guidance, label="Guidance spec (any v2a-sample --guidance)",
                                      elem_id="spec", scale=2)  # fmt: skip
                explained = gr.Markdown(explain(first_guidance, cls.default_solver, default_steps),
                                        elem_id="explain")  # fmt: skip
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Textbox(label="Result", interactive=False, elem_id="status", elem_classes="v2a-line")
                with gr.Row():
                    out_video = gr.Video(
                        label="Video with the new soundtrack",
                        interactive=False,
                        elem_id="out-video",
                        height=OUT_VIDEO_HEIGHT,
                    )
                    with gr.Column():
                        out_png = gr.Image(label="Spectrogram", type="filepath", interactive=False,
                                           elem_id="out-spectrogram", buttons=IMAGE_BUTTONS)  # fmt: skip
                        out_wav = gr.File(label="WAV", interactive=False, elem_id="out-wav")
            with gr.Tab("Compare", id="compare-tab", elem_id="compare-panel"):
                with gr.Row():
                    defaults = ["cfg", first_guidance if first_guidance != "cfg" else "hg"]
                    boxes = [gr.Textbox(defaults[k] if k < len(defaults) else "", label=f"Spec {k + 1}",
                                        placeholder="(empty: unused)", elem_id=f"compare-spec-{k + 1}")
                             for k in range(COMPARE_MAX)]  # fmt: skip
                compare_explained = gr.Markdown(explain_compare(*[b.value for b in boxes], cls.default_solver,
                                                                default_steps), elem_id="compare-explain")  # fmt: skip
                go_compare = gr.Button("Compare", variant="primary", elem_id="compare")
                compare_status = gr.Textbox(label="Result", interactive=False, elem_id="compare-status",
                                            elem_classes="v2a-line")  # fmt: skip
                columns, cells = [], []
                with gr.Row():
                    for k in range(COMPARE_MAX):
                        with gr.Column(visible=k < COMPARE_MIN, min_width=220, elem_id=f"column-{k + 1}") as col:
                            cells += [
                                gr.Markdown(elem_id=f"column-{k + 1}-title"),
                                gr.Video(
                                    label="Video",
                                    interactive=False,
                                    elem_id=f"column-{k + 1}-video",
                                    height=OUT_VIDEO_HEIGHT,
                                ),
                                gr.Image(
                                    label="Spectrogram",
                                    type="filepath",
                                    interactive=False,
                                    elem_id=f"column-{k + 1}-spectrogram",
                                    buttons=IMAGE_BUTTONS,
                                ),
                                gr.Textbox(
                                    show_label=False,
                                    container=False,
                                    interactive=False,
                                    elem_id=f"column-{k + 1}-line",
                                    elem_classes="v2a-line",
                                ),
                            ]
                        columns.append(col)

        quick = {"queue": False, "show_progress": "hidden"}
        preset.input(lambda p: p, preset, spec, **quick)
        for trigger in (spec.change, solver.change, n_steps.change):
            trigger(explain, [spec, solver, n_steps], explained, **quick)
        for box in boxes:
            box.change(explain_compare, [*boxes, solver, n_steps], compare_explained, **quick)
        for trigger in (solver.change, n_steps.change):
            trigger(explain_compare, [*boxes, solver, n_steps], compare_explained, **quick)
        model.change(on_model, model, [model_note, bad, prompt, negative, preset, spec], **quick)

        def on_bad(model_value, bad_value, current):
            """A spec still at a default follows the bad model (no bad model: ``cfg``); a typed spec stays."""
            m = studio.model(model_value)
            defaults = {m.default_guidance_with(v) for _, v in bad_model_choices(m, models)}
            if (current or "").strip() not in defaults:
                return gr.update(), gr.update()
            new = m.default_guidance_with(bad_value or DEFAULT_BAD)
            return new, new

        bad.change(on_bad, [model, bad, spec], [preset, spec], **quick)
        run_opts = {"concurrency_limit": 1, "concurrency_id": "sampler", "show_progress": "full"}
        go.click(generate, [video, spec, *settings], [status, out_video, out_png, out_wav], api_name="generate",
                 **run_opts)  # fmt: skip
        go_compare.click(compare, [video, *boxes, *settings], [compare_status, *cells, *columns],
                         api_name="compare", **run_opts)  # fmt: skip
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return demo


def _log(e: BaseException) -> None:
    """A failed request's traceback on the server's stderr (the page shows one line)."""
    if not isinstance(e, ValueError):
        traceback.print_exception(e, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, rich_markup_mode=None)


@cli.command()
def main(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="Address to listen on (default: this machine only).")] = DEFAULT_HOST,
    share: Annotated[
        bool, typer.Option("--share", help="Also open a public Gradio share link (needs the internet; off).")
    ] = False,
    steps: Annotated[int | None, typer.Option(min=1, help="Default solver steps in the page (default: 25).")] = None,
    max_seconds: Annotated[
        float, typer.Option(min=0.1, help="Longest stretch of video generated for (seconds).")
    ] = MAX_VIDEO_SECONDS,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="Torch CPU threads (default: 1 for the embedded model, torch's default for MMAudio)."),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Folder for uploads and outputs (default: a temporary one, removed on exit).")
    ] = None,
) -> None:
    """Start the v2a-sampler web app (Gradio) and serve it until interrupted."""
    os.environ.update(OFFLINE_ENV)
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="v2a-app-")) if own else Path(workdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        typer.echo(f"error: cannot use --workdir {root}: {error_line(e)}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if own:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the folder is removed on a plain kill too
    os.environ["GRADIO_TEMP_DIR"] = str(root / "uploads")
    try:
        import gradio  # noqa: F401
    except ImportError:
        typer.echo("error: the web app needs Gradio: pip install 'v2a-sampler[app]'", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    studio = Studio(root / "outputs", max_seconds=max_seconds, threads=threads)
    demo = build_app(studio, steps=steps)
    allowed = [str(DEMO_CLIP.parent)] if DEMO_CLIP.is_file() else []
    typer.echo(f"v2a-app: files in {root}" + (" (removed on exit)" if own else ""))
    try:
        demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD, allowed_paths=allowed,
                    css=CSS, footer_links=["settings"], show_error=False)  # fmt: skip
    except OSError as e:  # the port is taken, the address is not this machine's ...
        typer.echo(f"error: cannot serve on {host}:{port}: {error_line(e)}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None


def run() -> None:
    """Console-script entry point (``v2a-app``)."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = [
    "AppError",
    "ModelChoice",
    "Request",
    "Result",
    "Studio",
    "bad_model_choices",
    "build_app",
    "explain",
    "guidance_presets",
    "main",
    "model_choices",
]

if __name__ == "__main__":
    run()
