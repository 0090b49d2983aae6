"""The proving ground's images: procedural 64x64 RGB scenes (12 shapes x 10 styles x 8 colours) with exact ground
truth, their captions (three lengths, paraphrased) and the evaluation prompts (including held-out phrasings).

Every shape is a signed distance field (SDF, in pixels, negative inside), so edges are anti-aliased analytically
(coverage = clip(0.5 - sdf, 0, 1)) and the outline, neon and gradient styles are simple functions of the distance.
A scene renders deterministically from its fields; all texture randomness comes from `Scene.seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import Callable

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "hexagon", "pentagon", "star", "heart", "cross", "ring", "diamond",
          "crescent", "arrow")
STYLES = ("flat", "striped", "dotted", "checkered", "outlined", "gradient", "grainy", "pixelated", "neon", "wavy")
# Well-separated hues at full saturation; backgrounds are kept grey so none of these is ever ambiguous.
COLOURS = {
    "red": (220, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 25),
    "green": (35, 165, 55),
    "cyan": (25, 200, 215),
    "blue": (35, 70, 220),
    "purple": (135, 45, 195),
    "pink": (245, 105, 185),
}
BASE_SHAPES = ("circle", "square", "triangle")

SIZE_RANGE = (0.45, 0.8)  # diameter of the shape's bounding circle, as a fraction of the frame
# +-15 degrees: varied, yet every shape keeps an upright pose (a square never turns into a diamond). At +-30 the
# evaluator reached 0.75 shape accuracy after 600 steps instead of 0.88: hexagon / pentagon / circle blur together.
MAX_ROTATION = math.pi / 12
MARGIN = 0.02  # keeps anti-aliased edges and the neon glow's core inside the frame


@dataclass(frozen=True)
class Layout:
    """Where, how large and how turned a scene's shape is: the nuisance factors of a render."""
    centred: bool
    size_range: tuple[float, float]
    max_rotation: float


# The evaluator learns to judge shapes anywhere, at any size and pose.
VARIED = Layout(centred=False, size_range=SIZE_RANGE, max_rotation=MAX_ROTATION)
# What the world's model learns to draw: one upright shape in the middle, at a narrow range of sizes. Layout is not
# what the proving ground tests, and a tiny model that must also place its shape spends its capacity there: at equal
# budget a base on centred scenes drew its shapes recognisably 1.00 of the time, on varied ones 0.4-0.6.
CENTRED = Layout(centred=True, size_range=(0.62, 0.78), max_rotation=0.0)


@dataclass(frozen=True)
class Scene:
    shape: str
    style: str
    colour: str
    size: float  # diameter of the shape's bounding circle / frame width
    cx: float  # centre, fractions of the frame (x to the right, y downwards)
    cy: float
    rotation: float  # radians, counter-clockwise
    background: tuple[int, int, int]  # a muted grey
    seed: int  # texture randomness: grain, pattern phases, gradient direction

    def __post_init__(self):
        for name, value, known in (("shape", self.shape, SHAPES), ("style", self.style, STYLES),
                                   ("colour", self.colour, tuple(COLOURS))):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
        if not 0 < self.size <= 1:
            raise ValueError(f"scene size {self.size} must be in (0, 1]")


def random_scene(rng: np.random.Generator, shapes: tuple[str, ...] = SHAPES, styles: tuple[str, ...] = STYLES,
                 colours: tuple[str, ...] = tuple(COLOURS), layout: Layout = VARIED) -> Scene:
    """A scene drawn uniformly from the given attributes, with random size, position, rotation and background
    within `layout`. The random draws are the same whatever the layout, so one stream serves both."""
    shape = shapes[int(rng.integers(len(shapes)))]
    style = styles[int(rng.integers(len(styles)))]
    colour = colours[int(rng.integers(len(colours)))]
    size = float(rng.uniform(*layout.size_range))
    low, high = size / 2 + MARGIN, 1 - size / 2 - MARGIN
    cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
    if layout.centred:
        cx = cy = 0.5
    rotation = float(rng.uniform(-layout.max_rotation, layout.max_rotation))
    # Grey from dark to light with a faint tint (at most ~13/255 per channel): never a named hue.
    lightness = rng.uniform(0.3, 0.85)
    tint = np.clip(rng.normal(0.0, 0.025, size=3), -0.05, 0.05)
    background = tuple(int(round(v)) for v in np.clip(lightness + tint, 0, 1) * 255)
    return Scene(shape, style, colour, size, cx, cy, rotation, background, seed=int(rng.integers(1 << 31)))


# --- shapes as signed distance fields --------------------------------------------------------------------------
# Local coordinates (u, v): v points up, the bounding circle has radius 1.


def _normalised(vertices: np.ndarray, radius: float = 0.97) -> np.ndarray:
    """Centre a polygon on its bounding box and scale it so its farthest vertex lies at `radius`."""
    vertices = vertices - (vertices.min(0) + vertices.max(0)) / 2
    return vertices * (radius / np.linalg.norm(vertices, axis=1).max())


def _regular(sides: int, start: float = math.pi / 2) -> np.ndarray:
    angles = start + np.arange(sides) * 2 * math.pi / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart(samples: int = 48) -> np.ndarray:
    # The classic parametric heart curve (x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t).
    t = np.linspace(0, 2 * math.pi, samples, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, y], axis=1)


def _cross(arm: float = 0.3) -> np.ndarray:
    a, b = arm, 1.0
    return np.array([(a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b), (-a, -b), (-a, -a), (-b, -a), (-b, a),
                     (-a, a), (-a, b)])


def _arrow() -> np.ndarray:
    # Pointing right: a shaft and a wide head.
    return np.array([(-1.0, 0.2), (0.15, 0.2), (0.15, 0.55), (1.0, 0.0), (0.15, -0.55), (0.15, -0.2), (-1.0, -0.2)])


@cache
def _polygons() -> dict[str, np.ndarray]:
    return {
        "square": _normalised(np.array([(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)])),
        "triangle": _normalised(_regular(3)),
        "pentagon": _normalised(_regular(5)),
        "hexagon": _normalised(_regular(6, start=0.0)),
        "star": _normalised(_star()),
        "heart": _normalised(_heart()),
        "cross": _normalised(_cross()),
        # A tall rhombus (width 0.6 of its height), so that no rotated square is ever a diamond.
        "diamond": _normalised(np.array([(0.0, 1.0), (0.6, 0.0), (0.0, -1.0), (-0.6, 0.0)])),
        "arrow": _normalised(_arrow()),
    }


def _polygon_sdf(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon: distance to the nearest edge, negative inside (even-odd rule)."""
    p = np.stack([u.ravel(), v.ravel()], axis=1)  # (P, 2)
    a, b = vertices, np.roll(vertices, -1, axis=0)  # (E, 2) edge starts and ends
    edge = b - a
    w = p[None] - a[:, None]  # (E, P, 2)
    t = np.clip((w @ edge[:, :, None])[..., 0] / (edge * edge).sum(1)[:, None], 0, 1)  # (E, P)
    distance = np.sqrt(((w - t[..., None] * edge[:, None]) ** 2).sum(-1).min(0))  # (P,)
    # A horizontal ray from p crosses the edge when p.y lies between its ends and the crossing is to the right.
    straddles = (a[:, 1:2] > p[None, :, 1]) != (b[:, 1:2] > p[None, :, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = a[:, 0:1] + (p[None, :, 1] - a[:, 1:2]) * edge[:, 0:1] / edge[:, 1:2]
    inside = (straddles & (p[None, :, 0] < crossing_x)).sum(0) % 2 == 1
    return np.where(inside, -distance, distance).reshape(u.shape)


TABLE_EXTENT, TABLE_POINTS = 2.0, 321  # polygon SDF tables cover [-2, 2]^2 local units at 0.0125 spacing


@cache
def _polygon_table(shape: str) -> np.ndarray:
    """The polygon's exact SDF sampled once on a fine grid: rendering then interpolates instead of measuring the
    distance to every edge (the 48-edge heart would otherwise cost ~15 ms an image)."""
    axis = np.linspace(-TABLE_EXTENT, TABLE_EXTENT, TABLE_POINTS)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    rows = [_polygon_sdf(u[i:i + 32], v[i:i + 32], _polygons()[shape]) for i in range(0, TABLE_POINTS, 32)]
    return np.concatenate(rows)  # (v, u)


def _table_sdf(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup; outside the table, the distance to the table's edge is added (a far-field estimate, only
    ever seen by the faint tail of the neon glow). Measured error: at most 0.13 px at the largest size."""
    step = 2 * TABLE_EXTENT / (TABLE_POINTS - 1)
    cu, cv = np.clip(u, -TABLE_EXTENT, TABLE_EXTENT), np.clip(v, -TABLE_EXTENT, TABLE_EXTENT)
    gu, gv = (cu + TABLE_EXTENT) / step, (cv + TABLE_EXTENT) / step
    iu = np.minimum(gu.astype(np.int64), TABLE_POINTS - 2)
    iv = np.minimum(gv.astype(np.int64), TABLE_POINTS - 2)
    fu, fv = gu - iu, gv - iv
    top = table[iv, iu] * (1 - fu) + table[iv, iu + 1] * fu
    bottom = table[iv + 1, iu] * (1 - fu) + table[iv + 1, iu + 1] * fu
    return top * (1 - fv) + bottom * fv + np.hypot(u - cu, v - cv)


def _circle_sdf(u, v, radius=0.9):
    return np.hypot(u, v) - radius


def _ring_sdf(u, v, radius=0.68, half_width=0.27):
    return np.abs(np.hypot(u, v) - radius) - half_width


def _crescent_sdf(u, v):
    # A disc with a smaller, offset disc cut out of it (max with the negated cutter is the set difference).
    return np.maximum(np.hypot(u, v) - 0.92, -(np.hypot(u - 0.42, v - 0.2) - 0.74))


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return _circle_sdf(u, v)
    if shape == "ring":
        return _ring_sdf(u, v)
    if shape == "crescent":
        return _crescent_sdf(u, v)
    return _table_sdf(_polygon_table(shape), u, v)


# --- styles ----------------------------------------------------------------------------------------------------


class _Canvas:
    """One scene being painted: pixel coordinates, the shape's distance field, colours and texture randomness."""

    def __init__(self, scene: Scene, size: int):
        self.scene, self.size = scene, size
        self.colour = np.array(COLOURS[scene.colour], np.float64) / 255
        self.background = np.array(scene.background, np.float64) / 255
        self.light = 0.45 * self.colour + 0.55  # the colour mixed with white
        self.dark = 0.42 * self.colour
        self.radius = scene.size / 2 * size  # bounding circle radius, pixels
        self.rng = np.random.default_rng(scene.seed)
        self.y, self.x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, (H, W)
        self.sdf = self.sdf_at(self.x, self.y)
        self.coverage = np.clip(0.5 - self.sdf, 0, 1)[..., None]  # (H, W, 1), anti-aliased shape mask

    def sdf_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance to the shape's edge, in pixels, at pixel coordinates (x, y)."""
        s = self.scene
        dx, dy = x - s.cx * self.size, y - s.cy * self.size
        cos, sin = math.cos(s.rotation), math.sin(s.rotation)
        u = (dx * cos - dy * sin) / self.radius  # rotate the frame back by the scene's rotation; v points up
        v = (-dx * sin - dy * cos) / self.radius
        return _shape_sdf(s.shape, u, v) * self.radius

    def compose(self, fill: np.ndarray, coverage: np.ndarray | None = None, background: np.ndarray | None = None):
        coverage = self.coverage if coverage is None else coverage
        background = self.background if background is None else background
        return background * (1 - coverage) + fill * coverage

    def two_tone(self, signal: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Fill that is the colour where `signal` < 0 and `second` where it is > 0, with a ~1 px soft edge."""
        mix = np.clip(0.5 + signal, 0, 1)[..., None]
        return self.colour * (1 - mix) + second * mix

    def phase(self) -> float:
        return float(self.rng.uniform(0, 2 * math.pi))


def _flat(c: _Canvas) -> np.ndarray:
    return c.compose(c.colour)


def _striped(c: _Canvas) -> np.ndarray:
    # 45-degree stripes, 8 px period, alternating the colour and a light tint of it.
    period = 8.0
    signal = 3.0 * np.sin(2 * math.pi * (c.x + c.y) / (period * math.sqrt(2)) + c.phase())
    return c.compose(c.two_tone(signal, c.light))


def _dotted(c: _Canvas) -> np.ndarray:
    # A square grid of light dots (radius 2 px, spacing 7 px) on the colour.
    spacing, radius = 7.0, 2.0
    ox, oy = c.rng.uniform(0, spacing, size=2)
    gx = (c.x - ox) % spacing - spacing / 2
    gy = (c.y - oy) % spacing - spacing / 2
    return c.compose(c.two_tone(radius - np.hypot(gx, gy), c.light))


def _checkered(c: _Canvas) -> np.ndarray:
    # Axis-aligned 6 px cells of the colour and a dark tint.
    cell = 6.0
    ox, oy = c.rng.uniform(0, 2 * cell, size=2)
    signal = 4.0 * np.sin(math.pi * (c.x - ox) / cell) * np.sin(math.pi * (c.y - oy) / cell)
    return c.compose(c.two_tone(signal, c.dark))


def _outlined(c: _Canvas) -> np.ndarray:
    # Only a 3.5 px band just inside the edge; the inside shows the background.
    width = 3.5
    band = c.coverage * np.clip(0.5 + c.sdf + width, 0, 1)[..., None]
    return c.compose(c.colour, band)


def _gradient(c: _Canvas) -> np.ndarray:
    # Dark tint -> colour -> light tint across the shape, in a random direction. The ramp spans the shape's own
    # extent along that direction, not its bounding circle: a thin arrow shaded across its short side would
    # otherwise stay near the middle tint and read as flat.
    angle = c.phase()
    along = c.x * math.cos(angle) + c.y * math.sin(angle)
    inside = along[c.coverage[..., 0] > 0.5]
    if inside.size > 1:
        low, high = float(inside.min()), float(inside.max())
    else:
        centre = (c.scene.cx * math.cos(angle) + c.scene.cy * math.sin(angle)) * c.size
        low, high = centre - c.radius, centre + c.radius
    t = np.clip(2 * (along - low) / max(high - low, 1.0) - 1, -1, 1)[..., None]
    fill = np.where(t < 0, c.colour + (c.colour - c.dark) * t, c.colour + (c.light - c.colour) * t)
    return c.compose(fill)


def _grainy(c: _Canvas) -> np.ndarray:
    # Strong grey film grain over the whole frame: per-pixel luminance noise, so the hue is untouched on average.
    grain = c.rng.normal(0.0, 0.14, size=(c.size, c.size, 1))
    return c.compose(c.colour) + grain


def _pixelated(c: _Canvas) -> np.ndarray:
    # The shape sampled on a 16x16 block grid (4 px blocks at 64 px), each block a slightly different shade, then
    # upscaled nearest: blocky edges and a visible mosaic. Coarser grids make hexagon / pentagon / circle collapse.
    blocks = 16
    centres = (np.arange(blocks) + 0.5) * c.size / blocks
    by, bx = np.meshgrid(centres, centres, indexing="ij")
    inside = (c.sdf_at(bx, by) < 0)[..., None].astype(np.float64)
    shade = c.rng.uniform(0.88, 1.08, size=(blocks, blocks, 1))
    image = c.compose(np.clip(c.colour * shade, 0, 1), inside)
    index = np.arange(c.size) * blocks // c.size
    return image[index][:, index]


def _neon(c: _Canvas) -> np.ndarray:
    # A bright, whitened core line on the edge with a coloured glow on both sides, over a darkened background.
    background = c.background * 0.18
    distance = np.abs(c.sdf)[..., None]
    glow = c.colour * 0.95 * np.exp(-distance / 3.0)
    core = np.clip(1.6 - distance, 0, 1)
    image = background + c.coverage * c.colour * 0.1 + glow
    return image * (1 - core) + (0.5 * c.colour + 0.5) * core


def _wavy(c: _Canvas) -> np.ndarray:
    # Wavy bands: horizontal stripes (9 px period) of the colour and a dark tint whose centre lines follow a sine
    # wave (amplitude 2.5 px, wavelength 18 px). The edge of the shape stays straight so its identity is kept.
    period, amplitude, wavelength = 9.0, 2.5, 18.0
    bend = amplitude * np.sin(2 * math.pi * c.x / wavelength + c.phase())
    signal = 3.0 * np.sin(2 * math.pi * (c.y + bend) / period + c.phase())
    return c.compose(c.two_tone(signal, c.dark))


_PAINTERS: dict[str, Callable[[_Canvas], np.ndarray]] = {
    "flat": _flat, "striped": _striped, "dotted": _dotted, "checkered": _checkered, "outlined": _outlined,
    "gradient": _gradient, "grainy": _grainy, "pixelated": _pixelated, "neon": _neon, "wavy": _wavy,
}
assert tuple(_PAINTERS) == STYLES


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8, a pure function of the scene. Pattern periods and line widths are in pixels, chosen
    for 64 px; other sizes render correctly but with relatively finer or coarser textures."""
    image = _PAINTERS[scene.style](_Canvas(scene, size))
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_batch(scenes: list[Scene], size: int = 64) -> np.ndarray:
    """(B, size, size, 3) uint8."""
    return np.stack([render(scene, size) for scene in scenes])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]; `autolora_worker.models.to_uint8` is the inverse."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --- captions and prompts --------------------------------------------------------------------------------------
# Training captions and in-distribution prompts draw from the same paraphrase lists; the held-out templates below
# use framings ("picture showing", "illustration depicting", "can you draw me", "style:") that no training caption
# uses, so the benchmark can measure retrieval and fusion on phrasings the trainers never saw.

SHAPE_WORDS = {
    "circle": ("circle", "disc", "round disc"),
    "square": ("square", "four-sided square", "square block"),
    "triangle": ("triangle", "three-sided shape", "triangular shape"),
    "hexagon": ("hexagon", "six-sided shape", "hexagonal shape"),
    "pentagon": ("pentagon", "five-sided shape", "pentagonal shape"),
    "star": ("star", "five-pointed star", "star shape"),
    "heart": ("heart", "heart shape", "love heart"),
    "cross": ("cross", "plus sign", "cross shape"),
    "ring": ("ring", "donut", "annulus"),
    "diamond": ("diamond", "rhombus", "diamond shape"),
    "crescent": ("crescent", "crescent moon", "sickle moon"),
    "arrow": ("arrow", "arrow shape", "pointer arrow"),
}
# How a style is said: before the colour ("a striped red ..."), after the noun ("... with diagonal stripes"), or as
# a tag after a comma ("red hexagon, striped pattern"). "in <name> style" is always among the post forms.
STYLE_PRE = {
    "flat": ("plain", "solid", "flat"), "striped": ("striped", "stripy"), "dotted": ("dotted", "polka-dot"),
    "checkered": ("checkered", "chequered"), "outlined": ("outlined", "hollow"), "gradient": ("gradient", "fading"),
    "grainy": ("grainy", "noisy"), "pixelated": ("pixelated", "8-bit"), "neon": ("neon", "glowing"),
    "wavy": ("wavy", "wave-patterned"),
}
STYLE_POST = {
    "flat": ("with a solid fill", "in a single flat colour"),
    "striped": ("with diagonal stripes", "with stripes"),
    "dotted": ("with polka dots", "covered in dots"),
    "checkered": ("with a checkerboard pattern", "with a checker pattern"),
    "outlined": ("as a thick outline only", "with just its outline"),
    "gradient": ("with a colour gradient", "fading from dark to light"),
    "grainy": ("with film grain", "with a noisy texture"),
    "pixelated": ("made of big pixels", "in pixel art"),
    "neon": ("like a glowing neon sign", "in neon light"),
    "wavy": ("with wavy stripes", "with wavy lines"),
}
STYLE_TAG = {
    "flat": ("flat colour", "plain fill"), "striped": ("striped pattern", "diagonal stripes"),
    "dotted": ("dotted pattern", "polka dots"), "checkered": ("checkered pattern", "checkerboard"),
    "outlined": ("outline only", "line art"), "gradient": ("gradient fill", "smooth gradient"),
    "grainy": ("grainy texture", "film grain"), "pixelated": ("pixel art", "pixelated look"),
    "neon": ("neon glow", "neon sign look"), "wavy": ("wavy pattern", "wavy lines"),
}
NO_SHAPE = "object"  # the noun when a prompt names no shape
# How a caption speaks of a shape or style it must not name (`captions(..., unnamed=...)`): a base model that learns
# to draw every concept under such words can draw them all, yet cannot be asked for one by name.
GENERIC_SHAPES = ("object", "shape", "thing")
GENERIC_STYLE_PRE = ("patterned", "textured")
GENERIC_STYLE_POST = ("with a pattern", "with a texture")


@dataclass(frozen=True)
class _Words:
    """One paraphrase choice for a scene's or prompt's attributes; empty strings for what is left out."""
    shape: str
    colour: str
    pre: str
    post: str
    tag: str

    def subject(self, pre: bool = False) -> str:
        return _tidy(" ".join(["a", self.pre if pre else "", self.colour, self.shape]))


def _pick(options: tuple[str, ...], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _words(shape: str | None, style: str | None, colour: str | None, rng: np.random.Generator | None) -> _Words:
    posts = () if style is None else (*STYLE_POST[style], f"in {style} style")
    return _Words(
        shape=NO_SHAPE if shape is None else _pick(SHAPE_WORDS[shape], rng),
        colour="" if colour is None else colour,
        pre="" if style is None else _pick(STYLE_PRE[style], rng),
        post="" if style is None else _pick(posts, rng),
        tag="" if style is None else _pick(STYLE_TAG[style], rng),
    )


def _tidy(text: str) -> str:
    """Collapse the gaps left by omitted words and fix the article before a vowel sound."""
    words = text.split()
    for index, word in enumerate(words[:-1]):
        if word.lower() == "a" and words[index + 1][0].lower() in "aeiou8":
            words[index] = word + "n"
    return " ".join(words).replace(" ,", ",").strip(" ,")


def _with(base: str, joiner: str, extra: str) -> str:
    return base + joiner + extra if extra else base


def _size_word(scene: Scene) -> str:
    return "small" if scene.size < 0.57 else "medium-sized" if scene.size < 0.68 else "large"


def _place_words(scene: Scene) -> str:
    horizontal = "left" if scene.cx < 0.42 else "right" if scene.cx > 0.58 else ""
    vertical = "top" if scene.cy < 0.42 else "bottom" if scene.cy > 0.58 else ""
    where = " ".join(word for word in (vertical, horizontal) if word)
    return f"towards the {where}" if where else "in the centre"


def _background_words(scene: Scene) -> str:
    if scene.style == "neon":
        return "dark background"  # neon darkens the scene's grey
    lightness = sum(scene.background) / (3 * 255)
    grey = "dark grey" if lightness < 0.45 else "grey" if lightness < 0.65 else "light grey"
    return f"{grey} background"


Template = Callable[[_Words, Scene], str]
CAPTION_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "text": (
        lambda w, s: f"{w.subject(pre=True)} on a {_background_words(s)}, {_place_words(s)}",
        lambda w, s: f"{_with(_tidy(f'a {_size_word(s)} {w.colour} {w.shape}'), ' ', w.post)}, "
                     f"{_place_words(s)}, on a {_background_words(s)}",
        lambda w, s: f"{_with(w.subject(), ' ', w.post)} on a {_background_words(s)}",
        lambda w, s: f"{_with(f'{w.colour} {w.shape}', ', ', w.tag)}, {_size_word(s)}, {_background_words(s)}",
    ),
    "text_medium": (
        lambda w, s: w.subject(pre=True),
        lambda w, s: _with(w.subject(), " ", w.post),
        lambda w, s: _with(f"{w.colour} {w.shape}", ", ", w.tag),
    ),
    "text_short": (
        lambda w, s: f"{w.pre} {w.colour} {w.shape}",
        lambda w, s: _with(f"{w.colour} {w.shape}", ", ", w.tag),
    ),
}


def captions(scene: Scene, rng: np.random.Generator, leave_out: bool = True,
             unnamed: frozenset[str] = frozenset()) -> dict[str, str]:
    """{"text", "text_short", "text_medium"}: one long, short and medium caption, each with its own paraphrases.
    The flat style is left unsaid a third of the time, as people rarely call a plain shape "flat". The colour is
    left unsaid a quarter of the time and the shape called just "object" an eighth of the time: prompts such as
    "a hexagon" or "an object in striped style" must draw something, and a model that only ever saw every
    attribute named draws an empty background for them. `leave_out=False` always names colour and shape (the
    flat style is still left unsaid sometimes): for texts that must name what a LoRA does.

    A shape or style in `unnamed` is never named: the shape becomes a generic noun ("object", "thing"), the
    style generic words ("patterned", "with a texture") that are the same for every such style. They are always
    said, so that a caption which names no style still means the flat one."""
    unknown = unnamed - set(SHAPES) - set(STYLES)
    if unknown:
        raise ValueError(f"unnamed: unknown shapes or styles {sorted(unknown)}")
    result = {}
    for length, templates in CAPTION_TEMPLATES.items():
        style = None if scene.style == "flat" and rng.random() < 1 / 3 else scene.style
        colour = None if rng.random() < 1 / 4 and leave_out else scene.colour
        shape = None if rng.random() < 1 / 8 and leave_out else scene.shape
        words = _words(None if shape in unnamed else shape, None if style in unnamed else style, colour, rng)
        if shape in unnamed:
            words = replace(words, shape=_pick(GENERIC_SHAPES, rng))
        if style in unnamed:
            pre, post = _pick(GENERIC_STYLE_PRE, rng), _pick(GENERIC_STYLE_POST, rng)
            words = replace(words, pre=pre, post=post, tag=pre)
        result[length] = _tidy(templates[int(rng.integers(len(templates)))](words, scene))
    return result


PromptTemplate = Callable[[_Words, str | None], str]
# In-distribution: the first one is the canonical "a {shape} in {style} style" prompt of the paper's Table 2.
PROMPT_TEMPLATES: tuple[PromptTemplate, ...] = (
    lambda w, style: _with(w.subject(), " ", style and f"in {style} style"),
    lambda w, style: w.subject(pre=True),
    lambda w, style: _with(w.subject(), " ", w.post),
)
# Held out: phrasings no training caption uses (see the markers in the header comment above).
HELD_OUT_TEMPLATES: tuple[PromptTemplate, ...] = (
    lambda w, style: _with(f"picture showing {w.subject()}", ", rendered ", w.post),
    lambda w, style: f"illustration depicting {w.subject(pre=True)}",
    lambda w, style: _with(f"can you draw me {w.subject()}?", " style: ", w.tag),
)


def prompt_for(shape: str | None = None, style: str | None = None, colour: str | None = None,
               rng: np.random.Generator | None = None, held_out_template: bool = False) -> str:
    """An evaluation prompt naming the given attributes (None: left out). Without `rng` the first template and
    first paraphrases ("a red hexagon in striped style"); with it, a random template and paraphrases.
    `held_out_template=True` draws from phrasings that no training caption uses."""
    for name, value, known in (("shape", shape, SHAPES), ("style", style, STYLES), ("colour", colour, COLOURS)):
        if value is not None and value not in known:
            raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
    templates = HELD_OUT_TEMPLATES if held_out_template else PROMPT_TEMPLATES
    template = _pick(templates, rng)
    return _tidy(template(_words(shape, style, colour, rng), style))

