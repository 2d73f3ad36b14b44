"""A procedural audio-visual world: objects whose visual events cause sounds, rendered with numpy.

A clip is a dark room with a floor. Objects of several classes (:data:`CLASSES`, each a shape + colour + motion +
timbre) appear, move and make events:

* ``ball`` (red circle) falls under gravity and bounces: a percussive thud at every floor or wall contact;
* ``block`` (blue square) and ``bell`` (yellow triangle) slide and rebound off the walls, floor and ceiling: a
  noise burst / a ringing tone at every contact;
* ``lamp`` (green diamond) and ``buzzer`` (magenta ring) stand still and flash: a chirp / a buzz at every flash;
* ``ghost`` (grey cross) slides around silently: a distractor.

An object's size sets its pitch (bigger is lower); impact speed sets loudness. Contacts glow briefly and flashes
light a halo, so every event is visible in the frames. Sound onsets are the event times to the sample.

Ambiguity, so that a conditional model (and guidance) has work to do (see :class:`WorldConfig`): timbre parameters
not fixed by the picture are random; some visible events are silent; some sounds come from off screen; a silent
distractor moves like the sounding objects; background noise (pink noise, sometimes mains hum) of random level.

Everything is deterministic given the seed and the arguments of :func:`make_clip`. Positions are normalised:
``x`` in [0, 1] left to right (fraction of the width), ``y`` in [0, 1] top to bottom (fraction of the height).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .timbres import TIMBRES

__all__ = [
    "CLASSES",
    "CLASS_BY_NAME",
    "Clip",
    "Event",
    "SoundClass",
    "WorldConfig",
    "class_sound",
    "event_sound",
    "make_clip",
    "num_frames",
]

# ---------------------------------------------------------------------------------------------------------------
# Constants of the world
# ---------------------------------------------------------------------------------------------------------------

#: Height of the floor's top edge, as a fraction of the frame height.
FLOOR_Y = 0.88
#: Gravity, in frame heights per second squared (a drop of half the frame takes about 0.6 s).
GRAVITY = 2.8
#: Object radius range as a fraction of the smaller frame side; ``size`` 0..1 maps linearly onto it.
RADIUS_RANGE = (0.05, 0.11)
#: Range of sliding speeds (frame widths/heights per second): a wall contact every 1-3 s per axis.
SLIDE_SPEED = (0.25, 0.7)
#: Range of horizontal speeds of bouncing balls (frame widths per second).
BALL_SPEED_X = (0.0, 0.35)
#: Coefficient of restitution of balls (fraction of the speed kept at each floor contact).
RESTITUTION = (0.72, 0.9)
#: Balls rebounding slower than this (frame heights per second) come to rest.
REST_SPEED = 0.25
#: Contact speed (normal component, frame sizes per second) that gives the loudest sound.
LOUD_SPEED = 2.0
#: Flash rate range of lamps and buzzers (flashes per second) and the shortest gap between two flashes (s).
FLASH_RATE = (0.4, 1.1)
FLASH_MIN_GAP = 0.35
#: How long a flash stays lit and a contact glows (seconds; 2-3 frames at 24 fps).
FLASH_S = 0.12
GLOW_S = 0.08
#: Share of a flashing object's colour shown between flashes, and the halo's opacity during a flash.
DIM = 0.45
HALO_ALPHA = 0.6
#: Events closer than this to the clip's end are dropped (their sound would be cut to nothing).
END_MARGIN_S = 0.05
#: Level range (dB relative to full scale, of each event's peak) of flashes and of off-screen sounds.
FLASH_LEVEL_DB = (-14.0, -6.0)
OFFSCREEN_LEVEL_DB = (-26.0, -16.0)
#: Level range of contacts, from the slowest to the fastest (``LOUD_SPEED``) contact.
CONTACT_LEVEL_DB = (-22.0, -5.0)
#: Mains hum: fundamental frequencies (Hz), level range (dBFS RMS) and relative amplitudes of its harmonics 1-3.
HUM_HZ = (50.0, 60.0)
HUM_LEVEL_DB = (-46.0, -36.0)
HUM_HARMONICS = (1.0, 0.5, 0.25)
#: The mix is scaled down when its peak would exceed this (and the events' gains with it).
PEAK_LIMIT = 0.99
#: Background colour range (0-255 per channel) of the room, and how much lighter the floor is.
ROOM_SHADE = (12, 48)
FLOOR_LIFT = 45.0
#: Vertical brightness gradient of the room (0-255 units from top to floor).
ROOM_GRADIENT = 14.0
#: Upper bound for seeds drawn from a generator (fits a JSON integer and numpy's seeding).
SEED_BOUND = 2**31


@dataclass(frozen=True)
class SoundClass:
    """A visual class and the sound it makes."""

    id: int
    name: str
    shape: str  # circle, square, triangle, diamond, ring, cross
    colour: tuple[int, int, int]  # RGB
    motion: str  # bounce (gravity), slide (straight lines, rebounds), flash (still, flashes)
    timbre: str | None  # key of TIMBRES; None: silent


#: The classes of the world. Ids are stable; the last one is silent.
CLASSES: tuple[SoundClass, ...] = (
    SoundClass(0, "ball", "circle", (230, 60, 50), "bounce", "percussive"),
    SoundClass(1, "block", "square", (60, 110, 235), "slide", "noise_burst"),
    SoundClass(2, "bell", "triangle", (240, 205, 50), "slide", "tonal"),
    SoundClass(3, "lamp", "diamond", (60, 215, 110), "flash", "chirp"),
    SoundClass(4, "buzzer", "ring", (225, 80, 225), "flash", "buzz"),
    SoundClass(5, "ghost", "cross", (150, 150, 150), "slide", None),
)
CLASS_BY_NAME: dict[str, SoundClass] = {c.name: c for c in CLASSES}
SOUNDING = tuple(c for c in CLASSES if c.timbre is not None)
SILENT = tuple(c for c in CLASSES if c.timbre is None)


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world's content and ambiguity (defaults: the training distribution)."""

    min_objects: int = 1  # sounding objects per clip
    max_objects: int = 3
    distractor_prob: float = 0.35  # chance of one silent ghost
    late_entry_prob: float = 0.4  # chance an object appears after the start (in the first half)
    silent_event_prob: float = 0.1  # chance a visible event makes no sound
    offscreen_rate: float = 0.1  # sounds per second with no visible cause
    noise_db: tuple[float, float] = (-52.0, -32.0)  # background noise level range, dBFS RMS
    hum_prob: float = 0.3  # chance of mains hum

    @classmethod
    def clean(cls) -> WorldConfig:
        """No ambiguity: every event audible, nothing off screen, no distractor, near-silent background."""
        return cls(
            distractor_prob=0.0, silent_event_prob=0.0, offscreen_rate=0.0, noise_db=(-90.0, -90.0), hum_prob=0.0
        )


@dataclass(frozen=True)
class Event:
    """A sound event (or a silent visible event): onset time, cause and how it sounds."""

    time: float  # onset, seconds from the clip start
    class_id: int
    class_name: str
    kind: str  # floor, wall, ceiling, flash, offscreen
    object_id: int  # index into Clip.objects; -1 for off-screen sounds
    x: float | None  # normalised position of the object at the event; None off screen
    y: float | None
    size: float  # object size in [0, 1]: sets the pitch
    gain: float  # peak amplitude of the sound in the mix (0 when silent)
    audible: bool
    visible: bool
    sound_seed: int  # seed of the timbre's generator: event_sound() rebuilds the sound


@dataclass(frozen=True)
class ObjectInfo:
    """An object of a clip: what it is and when it is on screen."""

    id: int
    class_id: int
    class_name: str
    size: float
    radius: float  # fraction of the smaller frame side
    appear: float  # seconds


@dataclass
class Clip:
    """A rendered clip: frames, audio and the events that caused the audio."""

    seed: int
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [N]
    sample_rate: int
    fps: float
    duration: float
    events: list[Event]
    objects: list[ObjectInfo]
    background: dict[str, float | None] = field(default_factory=dict)  # noise_db, hum_hz, hum_db (None: no hum)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def audible_events(self) -> list[Event]:
        return [e for e in self.events if e.audible]

    def metadata(self) -> dict[str, Any]:
        """JSON-ready description of the clip (everything but the frames and samples)."""
        return {
            "format": "v2a-synth-events",
            "version": 1,
            "seed": self.seed,
            "duration": self.duration,
            "fps": self.fps,
            "sample_rate": self.sample_rate,
            "width": self.width,
            "height": self.height,
            "num_frames": int(self.frames.shape[0]),
            "num_samples": int(self.audio.shape[0]),
            "classes": [dataclasses.asdict(c) for c in CLASSES],
            "background": dict(self.background),
            "objects": [dataclasses.asdict(o) for o in self.objects],
            "events": [dataclasses.asdict(e) for e in self.events],
        }


def num_frames(duration: float, fps: float) -> int:
    """Frames of a clip: ``floor(duration * fps + 1/2)``, frame ``k`` showing time ``k / fps`` (as io.read_frames)."""
    return int(math.floor(duration * fps + 0.5 + 1e-9))


# ---------------------------------------------------------------------------------------------------------------
# Sounds
# ---------------------------------------------------------------------------------------------------------------


def class_sound(cls: str | int, sample_rate: int = 16000, seed: int = 0, size: float = 0.5) -> np.ndarray:
    """One example sound (peak 1) of a sounding class, by name or id: e.g. to train a sound classifier."""
    sound_class = CLASS_BY_NAME[cls] if isinstance(cls, str) else CLASSES[cls]
    if sound_class.timbre is None:
        raise ValueError(f"class {sound_class.name!r} is silent")
    return TIMBRES[sound_class.timbre](np.random.default_rng(seed), sample_rate, size)


def event_sound(event: Event, sample_rate: int) -> np.ndarray:
    """The sound an event adds to its clip's mix (``gain`` included; empty when silent)."""
    if not event.audible:
        return np.zeros(0, np.float32)
    return (class_sound(event.class_id, sample_rate, event.sound_seed, event.size) * event.gain).astype(np.float32)


def _db(level_db: float) -> float:
    return 10.0 ** (level_db / 20.0)


def _background(
    rng: np.random.Generator, n: int, sample_rate: int, config: WorldConfig
) -> tuple[np.ndarray, dict[str, float | None]]:
    """Pink noise (1/f power) at a random level, plus mains hum with probability ``hum_prob``."""
    noise_db = float(rng.uniform(*config.noise_db))
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    noise *= _db(noise_db) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    info: dict[str, float | None] = {"noise_db": noise_db, "hum_hz": None, "hum_db": None}
    if rng.random() < config.hum_prob:
        hum_hz = float(rng.choice(HUM_HZ))
        hum_db = float(rng.uniform(*HUM_LEVEL_DB))
        t = np.arange(n) / sample_rate
        hum = sum(a * np.sin(2.0 * np.pi * (k + 1) * hum_hz * t) for k, a in enumerate(HUM_HARMONICS))
        noise += hum * _db(hum_db) / float(np.sqrt(np.mean(hum**2)))
        info.update(hum_hz=hum_hz, hum_db=hum_db)
    return noise, info


# ---------------------------------------------------------------------------------------------------------------
# Motion
# ---------------------------------------------------------------------------------------------------------------


def _fold(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position at times ``t`` of a point moving at speed ``v`` from ``p0`` and rebounding between ``lo`` and ``hi``."""
    span = hi - lo
    u = np.mod(p0 - lo + v * t, 2.0 * span)
    return lo + np.where(u <= span, u, 2.0 * span - u)


def _fold_hits(p0: float, v: float, lo: float, hi: float, t_end: float) -> list[tuple[float, str]]:
    """Contact times in (0, t_end] of :func:`_fold`'s motion and the side hit ("lo" or "hi")."""
    if v == 0.0:
        return []
    span = hi - lo
    s0, s1 = p0 - lo, p0 - lo + v * t_end
    if v > 0:
        ks = range(math.floor(s0 / span) + 1, math.floor(s1 / span) + 1)
    else:
        ks = range(math.ceil(s0 / span) - 1, math.ceil(s1 / span) - 1, -1)
    return [((k * span - s0) / v, "hi" if k % 2 else "lo") for k in ks if (k * span - s0) / v > 0]


@dataclass
class _Ballistic:
    """Vertical motion of a bouncing ball: height above its floor level, piecewise parabolic."""

    starts: np.ndarray  # segment start times
    heights: np.ndarray  # height at each start
    speeds: np.ndarray  # upward speed at each start
    rest_time: float  # from here on the ball lies on the floor
    hits: list[tuple[float, float]]  # (time, impact speed)

    def height(self, t: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(self.starts, t, side="right") - 1, 0, len(self.starts) - 1)
        dt = t - self.starts[i]
        h = self.heights[i] + self.speeds[i] * dt - 0.5 * GRAVITY * dt**2
        return np.where(t >= self.rest_time, 0.0, np.maximum(h, 0.0))


def _bounce(h0: float, v0: float, restitution: float, t_end: float) -> _Ballistic:
    starts, heights, speeds, hits = [0.0], [h0], [v0], []
    t, h, v = 0.0, h0, v0
    while True:
        fall = (v + math.sqrt(v * v + 2.0 * GRAVITY * h)) / GRAVITY  # time until the floor
        impact = math.sqrt(v * v + 2.0 * GRAVITY * h)
        t += fall
        if t > t_end:
            return _Ballistic(np.array(starts), np.array(heights), np.array(speeds), math.inf, hits)
        hits.append((t, impact))
        h, v = 0.0, restitution * impact
        if v < REST_SPEED:
            return _Ballistic(np.array(starts), np.array(heights), np.array(speeds), t, hits)
        starts.append(t)
        heights.append(0.0)
        speeds.append(v)


@dataclass
class _Object:
    """An object while the clip is being built."""

    info: ObjectInfo
    cls: SoundClass
    rx: float  # radius as a fraction of the width
    ry: float  # radius as a fraction of the height
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))  # position at each frame
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    contacts: list[float] = field(default_factory=list)  # times of contacts (glow)
    flashes: list[float] = field(default_factory=list)  # times of flashes


def _build_object(
    rng: np.random.Generator,
    index: int,
    cls: SoundClass,
    duration: float,
    aspect: float,
    config: WorldConfig,
    frame_times: np.ndarray,
) -> tuple[_Object, list[tuple[float, str, float, float, float]]]:
    """Draw an object, its trajectory at the frame times and its raw events (time, kind, x, y, level dB)."""
    size = float(rng.uniform())
    radius = RADIUS_RANGE[0] + size * (RADIUS_RANGE[1] - RADIUS_RANGE[0])
    appear = float(rng.uniform(0.1, 0.5) * duration) if rng.random() < config.late_entry_prob else 0.0
    rx, ry = radius * min(1.0, 1.0 / aspect), radius * min(1.0, aspect)  # aspect = width / height
    obj = _Object(ObjectInfo(index, cls.id, cls.name, size, radius, appear), cls, rx, ry)
    x_lo, x_hi, y_lo, y_hi = rx, 1.0 - rx, ry, FLOOR_Y - ry
    local = np.maximum(frame_times - appear, 0.0)
    span = duration - appear
    raw: list[tuple[float, str, float, float, float]] = []

    def contact_db(speed: float) -> float:
        lo, hi = CONTACT_LEVEL_DB
        return lo + (hi - lo) * min(1.0, speed / LOUD_SPEED)

    if cls.motion == "bounce":
        x0, vx = rng.uniform(x_lo, x_hi), rng.uniform(*BALL_SPEED_X) * rng.choice([-1.0, 1.0])
        top = y_hi - y_lo  # highest point the ball may reach above its floor level
        h0 = rng.uniform(0.35, 0.9) * top
        v0 = min(rng.uniform(-0.3, 0.6), math.sqrt(2.0 * GRAVITY * (top - h0)))  # never above the ceiling
        ball = _bounce(h0, v0, rng.uniform(*RESTITUTION), span)
        obj.x = _fold(x0, vx, x_lo, x_hi, local)
        obj.y = y_hi - ball.height(local)
        for t, speed in ball.hits:
            raw.append((appear + t, "floor", float(_fold(x0, vx, x_lo, x_hi, np.array(t))), y_hi, contact_db(speed)))
        for t, side in _fold_hits(x0, vx, x_lo, x_hi, span):
            y = float(y_hi - ball.height(np.array([t]))[0])
            raw.append((appear + t, "wall", x_lo if side == "lo" else x_hi, y, contact_db(abs(vx))))
    elif cls.motion == "slide":
        x0, y0 = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
        speed, angle = rng.uniform(*SLIDE_SPEED), rng.uniform(0.0, 2.0 * math.pi)
        vx, vy = speed * math.cos(angle), speed * math.sin(angle)
        obj.x, obj.y = _fold(x0, vx, x_lo, x_hi, local), _fold(y0, vy, y_lo, y_hi, local)
        for t, side in _fold_hits(x0, vx, x_lo, x_hi, span):
            y = float(_fold(y0, vy, y_lo, y_hi, np.array(t)))
            raw.append((appear + t, "wall", x_lo if side == "lo" else x_hi, y, contact_db(abs(vx))))
        for t, side in _fold_hits(y0, vy, y_lo, y_hi, span):
            x = float(_fold(x0, vx, x_lo, x_hi, np.array(t)))
            kind, y = ("ceiling", y_lo) if side == "lo" else ("floor", y_hi)
            raw.append((appear + t, kind, x, y, contact_db(abs(vy))))
    else:  # flash: stands still, flashes at random (Poisson, with a minimum gap)
        x0, y0 = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
        obj.x, obj.y = np.full_like(local, x0), np.full_like(local, y0)
        rate, t = rng.uniform(*FLASH_RATE), appear
        while True:
            t += FLASH_MIN_GAP + rng.exponential(1.0 / rate)
            if t >= duration:
                break
            raw.append((t, "flash", x0, y0, rng.uniform(*FLASH_LEVEL_DB)))
    obj.contacts = [r[0] for r in raw if r[1] != "flash"]
    obj.flashes = [r[0] for r in raw if r[1] == "flash"]
    return obj, raw


# ---------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------


def _box(dx: np.ndarray, dy: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(dx) - hx, np.abs(dy) - hy
    return np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0)) + np.minimum(np.maximum(qx, qy), 0.0)


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of radius ``r`` centred at the origin (y down)."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return _box(dx, dy, 0.85 * r, 0.85 * r)
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.2 * r) / math.sqrt(2.0)
    if shape == "ring":
        return np.abs(np.hypot(dx, dy) - 0.72 * r) - 0.28 * r
    if shape == "cross":
        return np.minimum(_box(dx, dy, r, 0.3 * r), _box(dx, dy, 0.3 * r, r))
    if shape == "triangle":  # equilateral, pointing up, side 2 * 0.95 r (Inigo Quilez's exact distance)
        k, h = math.sqrt(3.0), 0.95 * r
        px, py = np.abs(dx) - h, -dy + h / k
        fold = px + k * py > 0.0
        px, py = np.where(fold, (px - k * py) / 2.0, px), np.where(fold, (-k * px - py) / 2.0, py)
        px = px - np.clip(px, -2.0 * h, 0.0)
        return -np.hypot(px, py) * np.sign(py)
    raise ValueError(f"unknown shape {shape!r}")


def _paint(canvas: np.ndarray, shape: str, cx: float, cy: float, r: float, colour: np.ndarray, alpha: float) -> None:
    """Blend an antialiased shape (1-pixel edge) into a float ``[H, W, 3]`` canvas, touching only its bounding box."""
    height, width = canvas.shape[:2]
    reach = 1.25 * r + 2.0
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    cover = np.clip(0.5 - _sdf(shape, dx, dy, r), 0.0, 1.0)[..., None] * alpha
    patch = canvas[y0:y1, x0:x1]
    patch += cover * (colour - patch)


def _room(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The static background: a dark room with a vertical gradient and a lighter floor."""
    base = rng.uniform(*ROOM_SHADE, size=3)
    rows = np.arange(height)[:, None] / max(height - 1, 1)
    shade = base[None, :] + ROOM_GRADIENT * rows
    shade = np.where(rows >= FLOOR_Y, base[None, :] + FLOOR_LIFT, shade)
    return np.broadcast_to(shade[:, None, :], (height, width, 3)).astype(np.float32)


def _recent(times: list[float], t: float, window: float) -> bool:
    return any(0.0 <= t - s < window for s in times)


def _render(room: np.ndarray, objects: list[_Object], frame_times: np.ndarray) -> np.ndarray:
    height, width = room.shape[:2]
    scale = min(height, width)
    white = np.full(3, 255.0, np.float32)
    frames = np.empty((len(frame_times), height, width, 3), np.uint8)
    for k, t in enumerate(frame_times):
        canvas = room.copy()
        for obj in objects:
            if t < obj.info.appear:
                continue
            colour = np.array(obj.cls.colour, np.float32)
            cx, cy, r = obj.x[k] * width, obj.y[k] * height, obj.info.radius * scale
            if obj.cls.motion == "flash":
                if _recent(obj.flashes, t, FLASH_S):
                    _paint(canvas, "circle", cx, cy, 1.25 * r, white, HALO_ALPHA)
                else:
                    colour = colour * DIM
            elif _recent(obj.contacts, t, GLOW_S):
                colour = 0.5 * (colour + white)
            _paint(canvas, obj.cls.shape, cx, cy, r, colour, 1.0)
        frames[k] = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return frames


# ---------------------------------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------------------------------


def make_clip(
    seed: int,
    duration: float = 5.0,
    fps: float = 24.0,
    size: int | tuple[int, int] = 96,
    sample_rate: int = 16000,
    config: WorldConfig | None = None,
) -> Clip:
    """Render one clip of the world: frames ``[T, H, W, 3]`` (``size`` = H or (H, W)), mono audio and events.

    ``T = num_frames(duration, fps)`` (frame ``k`` at ``k / fps``), ``N = round(duration * sample_rate)``.
    """
    config = config or WorldConfig()
    height, width = (size, size) if isinstance(size, int) else size
    if duration <= 0 or fps <= 0 or sample_rate <= 0 or height <= 0 or width <= 0:
        raise ValueError(
            f"need positive duration, fps, size, sample_rate; got {duration}, {fps}, {size}, {sample_rate}"
        )
    rng = np.random.default_rng(seed)
    frame_times = np.arange(num_frames(duration, fps)) / fps
    n_samples = round(duration * sample_rate)

    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    kinds = [SOUNDING[i] for i in rng.integers(0, len(SOUNDING), size=count)]
    if rng.random() < config.distractor_prob:
        kinds.append(SILENT[int(rng.integers(0, len(SILENT)))])
    objects: list[_Object] = []
    events: list[Event] = []
    for index, cls in enumerate(kinds):
        obj, raw = _build_object(rng, index, cls, duration, width / height, config, frame_times)
        objects.append(obj)
        if cls.timbre is None:
            continue  # the distractor's contacts make no sound and are no events
        for t, kind, x, y, level_db in raw:
            audible = bool(rng.random() >= config.silent_event_prob)
            events.append(
                Event(
                    time=float(t),
                    class_id=cls.id,
                    class_name=cls.name,
                    kind=kind,
                    object_id=index,
                    x=float(x),
                    y=float(y),
                    size=obj.info.size,
                    gain=_db(level_db) if audible else 0.0,
                    audible=audible,
                    visible=True,
                    sound_seed=int(rng.integers(SEED_BOUND)),
                )
            )
    n_offscreen = rng.poisson(config.offscreen_rate * duration)
    for _ in range(n_offscreen):
        cls = SOUNDING[int(rng.integers(0, len(SOUNDING)))]
        events.append(
            Event(
                time=float(rng.uniform(0.0, duration)),
                class_id=cls.id,
                class_name=cls.name,
                kind="offscreen",
                object_id=-1,
                x=None,
                y=None,
                size=float(rng.uniform()),
                gain=_db(rng.uniform(*OFFSCREEN_LEVEL_DB)),
                audible=True,
                visible=False,
                sound_seed=int(rng.integers(SEED_BOUND)),
            )
        )
    events = sorted((e for e in events if e.time < duration - END_MARGIN_S), key=lambda e: (e.time, e.object_id))

    audio, background = _background(np.random.default_rng(rng.integers(SEED_BOUND)), n_samples, sample_rate, config)
    for event in events:
        sound = event_sound(event, sample_rate)
        start = round(event.time * sample_rate)
        stop = min(n_samples, start + sound.shape[0])
        audio[start:stop] += sound[: stop - start]
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > PEAK_LIMIT:
        audio *= PEAK_LIMIT / peak
        events = [dataclasses.replace(e, gain=e.gain * PEAK_LIMIT / peak) for e in events]
        background["noise_db"] += 20.0 * math.log10(PEAK_LIMIT / peak)
        if background["hum_db"] is not None:
            background["hum_db"] += 20.0 * math.log10(PEAK_LIMIT / peak)

    frames = _render(_room(rng, height, width), objects, frame_times)
    return Clip(
        seed=seed,
        frames=frames,
        audio=audio.astype(np.float32),
        sample_rate=sample_rate,
        fps=float(fps),
        duration=float(duration),
        events=events,
        objects=[o.info for o in objects],
        background=background,
    )
