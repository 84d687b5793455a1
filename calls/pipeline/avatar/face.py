"""The persona's face: its look, its per-frame state, and a renderer that draws it in YUV."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import av
import numpy as np

# Everything is designed on a 320x240 canvas and scaled to the requested size.
DESIGN_WIDTH = 320
DESIGN_HEIGHT = 240
# How far the head may move, in frame pixels: the cached head layer is shifted, never redrawn.
MAX_HEAD_OFFSET_PX = 2
# How far the irises may look away from the camera, in design pixels.
MAX_GAZE_X_PX = 3.0
MAX_GAZE_Y_PX = 1.5
# How far a full brow raise lifts the brows, in design pixels.
BROW_RAISE_PX = 3.5
# Quantisation of the animated parameters: each distinct value is drawn once and cached.
MOUTH_OPEN_STEPS = 20
BLINK_STEPS = 16
BROW_STEPS = 16
GAZE_STEP_PX = 0.5
# Bounds on the caches, in entries (a whole-frame base is 115 kB, a feature patch 1-3 kB):
# about 3 MB of bases and at most ~3 MB of patches per renderer.
BASE_CACHE_ENTRIES = (2 * MAX_HEAD_OFFSET_PX + 1) ** 2  # all of them: a miss costs ~5 ms
PATCH_CACHE_ENTRIES = 1500

_HEX_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")

HAIR_STYLES = ("bob", "long", "short", "bun")

Colour = tuple[float, float, float]


class Viseme(StrEnum):
    """The mouth shapes the face can make; speech is mapped onto these."""

    CLOSED = "MBP"  # rest, and lips pressed for M, B, P
    OPEN = "A"
    WIDE = "EI"
    ROUND = "OU"
    TEETH_ON_LIP = "FV"


@dataclass(frozen=True)
class FaceLook:
    """How a persona looks: colours as '#rrggbb', a hair style, optionally a portrait path."""

    skin: str = "#e8b99a"
    hair: str = "#3b2a20"
    eyes: str = "#2f4a6b"
    lips: str = "#b5545c"
    background: str = "#dfe8f1"
    clothes: str = "#4d6a8a"
    hair_style: str = "bob"
    portrait: str | None = None

    @classmethod
    def from_dict(cls, look: Mapping[str, Any] | None) -> FaceLook:
        """Build from `Persona.avatar_look`; missing or invalid values fall back to the defaults."""
        look = look if isinstance(look, Mapping) else {}
        defaults = cls()
        colours = {}
        for name in ("skin", "hair", "eyes", "lips", "background", "clothes"):
            value = look.get(name)
            colours[name] = _normalise_hex(value) if _is_hex(value) else getattr(defaults, name)
        style = look.get("hairStyle", look.get("hair_style"))
        style = style.lower() if isinstance(style, str) else ""
        portrait = look.get("portrait")
        return cls(
            **colours,
            hair_style=style if style in HAIR_STYLES else defaults.hair_style,
            portrait=portrait if isinstance(portrait, str) and portrait else None,
        )

    def rgb(self, name: str) -> Colour:
        """A colour of this look as floats in 0..1."""
        return _hex_to_rgb(getattr(self, name))


@dataclass(frozen=True)
class FaceState:
    """What the face is doing in one frame."""

    mouth_open: float = 0.0  # 0 closed .. 1 fully open
    mouth_shape: Viseme = Viseme.CLOSED
    blink: float = 0.0  # 0 eyes open .. 1 closed
    head_dx: float = 0.0  # design pixels, small
    head_dy: float = 0.0
    gaze_dx: float = 0.0  # design pixels the irises move; + is the viewer's right
    gaze_dy: float = 0.0
    brow_raise: float = 0.0  # 0 relaxed .. 1 raised


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX_COLOUR.match(value.strip()))


def _normalise_hex(value: str) -> str:
    value = value.strip().lower()
    if len(value) == 4:
        value = "#" + "".join(ch * 2 for ch in value[1:])
    return value


def _hex_to_rgb(value: str) -> Colour:
    value = _normalise_hex(value)
    return (int(value[1:3], 16) / 255, int(value[3:5], 16) / 255, int(value[5:7], 16) / 255)


def _mix(a: Colour, b: Colour, amount: float) -> Colour:
    return (
        a[0] + (b[0] - a[0]) * amount,
        a[1] + (b[1] - a[1]) * amount,
        a[2] + (b[2] - a[2]) * amount,
    )


def _shade(colour: Colour, amount: float) -> Colour:
    """Darken towards a warm shadow rather than grey, which reads as flat-illustration shading."""
    shadow = (colour[0] * 0.62, colour[1] * 0.48, colour[2] * 0.52)
    return _mix(colour, shadow, amount)


def _luma(colour: Colour) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


WHITE: Colour = (1.0, 1.0, 1.0)
BLACK: Colour = (0.0, 0.0, 0.0)


# --- colour conversion -----------------------------------------------------------------------


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float RGB (H, W, 3) in 0..1, H and W even → BT.601 limited-range Y, U, V uint8 planes.

    The same matrix libswscale and browsers assume for yuv420p, so colours round-trip.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 16.0 + 219.0 * (0.299 * r + 0.587 * g + 0.114 * b)
    height, width = rgb.shape[:2]
    # Chroma is linear in RGB, so averaging RGB per 2x2 block equals averaging U and V.
    block = rgb.reshape(height // 2, 2, width // 2, 2, 3).mean(axis=(1, 3))
    br, bg, bb = block[..., 0], block[..., 1], block[..., 2]
    u = 128.0 + 224.0 * (-0.168736 * br - 0.331264 * bg + 0.5 * bb)
    v = 128.0 + 224.0 * (0.5 * br - 0.418688 * bg - 0.081312 * bb)
    return (
        np.clip(luma + 0.5, 0, 255).astype(np.uint8),
        np.clip(u + 0.5, 0, 255).astype(np.uint8),
        np.clip(v + 0.5, 0, 255).astype(np.uint8),
    )


def yuv_to_rgb(y: float, u: float, v: float) -> Colour:
    """One BT.601 limited-range YUV sample back to RGB in 0..1 (for tests and tools)."""
    luma = (y - 16.0) / 219.0
    cb = (u - 128.0) / 224.0
    cr = (v - 128.0) / 224.0
    red = luma + 1.402 * cr
    green = luma - 0.344136 * cb - 0.714136 * cr
    blue = luma + 1.772 * cb
    return (min(max(red, 0.0), 1.0), min(max(green, 0.0), 1.0), min(max(blue, 0.0), 1.0))


# --- anti-aliased shapes ---------------------------------------------------------------------
# A shape is an implicit function f(x, y) < 0 inside. Dividing by its numeric gradient gives
# the signed distance in pixels near the edge, and 0.5 - distance is the pixel's coverage:
# smooth edges with no supersampling.


def _distance(implicit: np.ndarray) -> np.ndarray:
    grad_y, grad_x = np.gradient(implicit)
    return implicit / np.maximum(np.hypot(grad_x, grad_y), 1e-6)


def _coverage(distance_px: np.ndarray, softness_px: float = 1.0) -> np.ndarray:
    return np.clip(0.5 - distance_px / softness_px, 0.0, 1.0)


class _Canvas:
    """A premultiplied RGBA layer over a pixel rectangle, addressed in design coordinates."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rgb: np.ndarray | None = None) -> None:
        self.x, self.y = x, y
        shape = x.shape
        self.rgb = np.zeros((*shape, 3)) if rgb is None else rgb.copy()
        self.alpha = np.zeros(shape) if rgb is None else np.ones(shape)

    def paint(self, coverage: np.ndarray, colour: Colour, opacity: float = 1.0) -> None:
        amount = coverage * opacity if opacity != 1.0 else coverage
        self.rgb += (np.asarray(colour) - self.rgb) * amount[..., None]
        self.alpha += (1.0 - self.alpha) * amount

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        """Signed distance (px) to an ellipse."""
        return _distance(np.hypot((self.x - cx) / rx, (self.y - cy) / ry) - 1.0)

    def circle(self, cx: float, cy: float, radius: float, scale: float) -> np.ndarray:
        return (np.hypot(self.x - cx, self.y - cy) - radius) * scale

    def below(self, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Signed distance (px) to the region under y = curve(x) (image y grows downwards)."""
        return _distance(curve(self.x) - self.y)

    def above(self, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Signed distance (px) to the region over y = curve(x)."""
        return _distance(self.y - curve(self.x))


def _over(bottom: np.ndarray, layer: _Canvas | tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    rgb, alpha = (layer.rgb, layer.alpha) if isinstance(layer, _Canvas) else layer
    return rgb + bottom * (1.0 - alpha[..., None])


def _union(*distances: np.ndarray) -> np.ndarray:
    return np.minimum.reduce(distances)


def _intersect(*distances: np.ndarray) -> np.ndarray:
    return np.maximum.reduce(distances)


# --- geometry (design pixels) ----------------------------------------------------------------

FACE_CX = 160.0
FACE_CY = 106.0
FACE_RX = 50.0
FACE_RY_TOP = 62.0
FACE_RY_BOTTOM = 68.0
EYE_Y = 112.0
EYE_DX = 21.5  # from the face's centre line
EYE_RX = 9.4
EYE_RY = 6.6
IRIS_R = 5.3
PUPIL_R = 2.5
BROW_Y = 97.0
MOUTH_Y = 151.0

# Feature patches, (x0, y0, width, height) in design pixels, even-aligned; each is redrawn per
# frame, so none may overlap another (1 px margins included) or leave the opaque face.
_EYE_RECT = (-14, 102, 28, 22)  # x relative to the eye centre
_BROW_RECT = (-14, 86, 28, 14)
_MOUTH_RECT = (134, 136, 52, 32)


def _face_implicit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """An egg: a round cranium narrowing to a soft chin."""
    dy = y - FACE_CY
    lower = np.clip(dy / FACE_RY_BOTTOM, 0.0, 1.0)
    half_width = FACE_RX * (1.0 - 0.30 * lower**2.2)
    radius_y = np.where(dy < 0, FACE_RY_TOP, FACE_RY_BOTTOM)
    return np.hypot((x - FACE_CX) / half_width, dy / radius_y) - 1.0


@dataclass(frozen=True)
class _MouthShape:
    half_width: float  # inner opening, design px
    open_up: float  # inner upper lip lift at full openness
    open_down: float  # inner lower lip drop at full openness
    rest_gap: float  # opening at openness 0 (F/V and E keep the lips a little apart)
    smile: float  # corners raised by
    lip_up: float  # upper lip thickness
    lip_down: float  # lower lip thickness
    corner: float  # how far the lips reach past the opening
    roundness: float  # 0.5 elliptical opening .. 1 flatter, wider
    teeth_up: float
    teeth_down: float
    tongue: float


_MOUTH_SHAPES = {
    Viseme.CLOSED: _MouthShape(13.0, 2.5, 6.0, 0.0, 2.4, 2.8, 3.6, 2.0, 0.8, 2.2, 0.0, 2.0),
    Viseme.OPEN: _MouthShape(12.0, 3.0, 11.0, 0.6, 1.4, 2.6, 3.4, 2.0, 0.7, 2.6, 0.0, 3.2),
    Viseme.WIDE: _MouthShape(16.0, 2.6, 5.0, 1.6, 2.6, 2.4, 3.0, 2.2, 0.9, 2.6, 1.8, 0.0),
    Viseme.ROUND: _MouthShape(5.0, 3.2, 6.6, 1.2, 0.0, 3.4, 4.0, 2.6, 0.5, 0.0, 0.0, 0.0),
    Viseme.TEETH_ON_LIP: _MouthShape(12.5, 1.6, 0.4, 0.9, 1.4, 2.8, 2.8, 2.0, 0.9, 3.4, 0.0, 0.0),
}


# --- the renderer ----------------------------------------------------------------------------


class FaceRenderer:
    """Draws a `FaceState` as a yuv420p `av.VideoFrame`.

    Everything that does not move with the face's expression (background, body, head, hair) is
    drawn once per head offset and cached as YUV planes; per frame, only the eye, brow and mouth
    patches are pasted over it, each drawn once per quantised state and cached too.
    """

    def __init__(self, look: FaceLook | Mapping[str, Any] | None = None, width: int = 320, height: int = 240):
        if width % 2 or height % 2 or width < 32 or height < 32:
            raise ValueError("width and height must be even and at least 32")
        self.look = look if isinstance(look, FaceLook) else FaceLook.from_dict(look)
        self.width, self.height = width, height
        self.scale = min(width / DESIGN_WIDTH, height / DESIGN_HEIGHT)
        self._origin_x = (width - DESIGN_WIDTH * self.scale) / 2
        self._origin_y = (height - DESIGN_HEIGHT * self.scale) / 2
        self._palette()
        x, y = self._grid(0, 0, width, height)
        self._background = self._draw_background(x, y)
        self._back_hair = self._draw_back_hair(x, y)
        self._body = self._draw_body(x, y)
        self._head = self._draw_head(x, y)
        # The face as it sits still, without features: what every feature patch is drawn over.
        self._still_rgb = _over(_over(_over(self._background, self._back_hair), self._body), self._head)
        self._bases: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._patches: OrderedDict[tuple[Any, ...], tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]
        self._patches = OrderedDict()
        self._patch_rects = {
            "eye_left": self._pixel_rect(_EYE_RECT, FACE_CX - EYE_DX),
            "eye_right": self._pixel_rect(_EYE_RECT, FACE_CX + EYE_DX),
            "brow_left": self._pixel_rect(_BROW_RECT, FACE_CX - EYE_DX),
            "brow_right": self._pixel_rect(_BROW_RECT, FACE_CX + EYE_DX),
            "mouth": self._pixel_rect(_MOUTH_RECT, 0.0),
        }

    # -- public ---------------------------------------------------------------------------

    def render(self, state: FaceState) -> av.VideoFrame:
        """One frame for this state."""
        return av.VideoFrame.from_ndarray(self.render_planes(state), format="yuv420p")

    def render_planes(self, state: FaceState) -> np.ndarray:
        """The frame as one (height * 3 / 2, width) uint8 array: Y, then U, then V."""
        limit = MAX_HEAD_OFFSET_PX
        dx = round(min(max(state.head_dx * self.scale, -limit), limit))
        dy = round(min(max(state.head_dy * self.scale, -limit), limit))
        buffer = self._base(dx, dy).copy()
        planes = self._plane_views(buffer)
        blink = round(min(max(state.blink, 0.0), 1.0) * BLINK_STEPS) / BLINK_STEPS
        gaze_x = round(min(max(state.gaze_dx, -MAX_GAZE_X_PX), MAX_GAZE_X_PX) / GAZE_STEP_PX) * GAZE_STEP_PX
        gaze_y = round(min(max(state.gaze_dy, -MAX_GAZE_Y_PX), MAX_GAZE_Y_PX) / GAZE_STEP_PX) * GAZE_STEP_PX
        brow = round(min(max(state.brow_raise, 0.0), 1.0) * BROW_STEPS) / BROW_STEPS
        mouth = round(min(max(state.mouth_open, 0.0), 1.0) * MOUTH_OPEN_STEPS) / MOUTH_OPEN_STEPS
        shape = Viseme(state.mouth_shape)
        for side in ("left", "right"):
            self._paste(planes, ("eye_" + side, blink, gaze_x, gaze_y), dx, dy)
            self._paste(planes, ("brow_" + side, brow), dx, dy)
        self._paste(planes, ("mouth", shape, mouth), dx, dy)
        return buffer

    def feature_box(self, name: str) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels at head offset 0 of a feature patch: eye_left, brow_right, mouth..."""
        x0, y0, width, height = self._patch_rects[name]
        return x0 - 1, y0 - 1, x0 + width + 1, y0 + height + 1

    # -- geometry helpers ---------------------------------------------------------------------

    def _grid(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Design coordinates of the centres of a rectangle of pixels."""
        xs = (np.arange(x0, x0 + width) + 0.5 - self._origin_x) / self.scale
        ys = (np.arange(y0, y0 + height) + 0.5 - self._origin_y) / self.scale
        return np.meshgrid(xs, ys)

    def _pixel_rect(self, rect: tuple[int, int, int, int], centre_x: float) -> tuple[int, int, int, int]:
        x, y, width, height = rect
        if rect is _MOUTH_RECT:
            left = x
        else:
            left = centre_x + x

        def even(value: float) -> int:
            return round(value / 2) * 2

        px0 = even(left * self.scale + self._origin_x)
        py0 = even(y * self.scale + self._origin_y)
        return px0, py0, max(2, even(width * self.scale)), max(2, even(height * self.scale))

    def _plane_views(self, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        width, height = self.width, self.height
        chroma = (height // 2) * (width // 2)
        flat = buffer.reshape(-1)
        luma = flat[: width * height].reshape(height, width)
        u = flat[width * height : width * height + chroma].reshape(height // 2, width // 2)
        v = flat[width * height + chroma :].reshape(height // 2, width // 2)
        return luma, u, v

    # -- caches -------------------------------------------------------------------------------

    def _base(self, dx: int, dy: int) -> np.ndarray:
        key = (dx, dy)
        base = self._bases.get(key)
        if base is not None:
            self._bases.move_to_end(key)
            return base
        rgb = _over(self._background, _shift(self._back_hair, dx, dy))
        rgb = _over(rgb, (self._body.rgb, self._body.alpha))
        rgb = _over(rgb, _shift(self._head, dx, dy))
        luma, u, v = rgb_to_yuv420(rgb)
        base = np.concatenate([luma.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(-1, self.width)
        self._bases[key] = base
        if len(self._bases) > BASE_CACHE_ENTRIES:
            self._bases.popitem(last=False)
        return base

    def _paste(
        self, planes: tuple[np.ndarray, np.ndarray, np.ndarray], key: tuple[Any, ...], dx: int, dy: int
    ) -> None:
        x0, y0, _width, _height = self._patch_rects[key[0]]
        # A patch is drawn with a 1 px margin so it can start on an even pixel at any offset:
        # chroma covers 2x2 blocks, and an odd head offset would otherwise split them.
        odd_x, odd_y = (x0 - 1 + dx) % 2, (y0 - 1 + dy) % 2
        full_key = (*key, odd_x, odd_y)
        patch = self._patches.get(full_key)
        if patch is None:
            patch = self._patch(key, odd_x, odd_y)
            self._patches[full_key] = patch
            if len(self._patches) > PATCH_CACHE_ENTRIES:
                self._patches.popitem(last=False)
        else:
            self._patches.move_to_end(full_key)
        left, top, luma, u, v = patch
        left += dx
        top += dy
        y_plane, u_plane, v_plane = planes
        if left < 0 or top < 0 or left + luma.shape[1] > self.width or top + luma.shape[0] > self.height:
            return  # only at tiny frame sizes; the feature is simply not drawn
        y_plane[top : top + luma.shape[0], left : left + luma.shape[1]] = luma
        u_plane[top // 2 : top // 2 + u.shape[0], left // 2 : left // 2 + u.shape[1]] = u
        v_plane[top // 2 : top // 2 + v.shape[0], left // 2 : left // 2 + v.shape[1]] = v

    def _patch(
        self, key: tuple[Any, ...], odd_x: int, odd_y: int
    ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
        name = key[0]
        x0, y0, width, height = self._patch_rects[name]
        left, top = x0 - 1, y0 - 1
        x, y = self._grid(left, top, width + 2, height + 2)
        canvas = _Canvas(x, y, self._still_rgb[top : top + height + 2, left : left + width + 2])
        if name.startswith("eye"):
            centre = FACE_CX + (-EYE_DX if name.endswith("left") else EYE_DX)
            self._draw_eye(canvas, centre, blink=key[1], gaze_x=key[2], gaze_y=key[3])
        elif name.startswith("brow"):
            self._draw_brow(canvas, left_side=name.endswith("left"), raise_amount=key[1])
        else:
            self._draw_mouth(canvas, shape=key[1], openness=key[2])
        rgb = np.clip(canvas.rgb, 0.0, 1.0)
        # With an odd start the margin column/row is dropped on the leading side and kept on
        # the trailing one; either way the patch starts on an even pixel and has an even size.
        rgb = rgb[
            odd_y : odd_y + height + 2 - 2 * odd_y or None, odd_x : odd_x + width + 2 - 2 * odd_x or None
        ]
        luma, u, v = rgb_to_yuv420(rgb)
        return left + odd_x, top + odd_y, luma, u, v

    # -- the look -----------------------------------------------------------------------------

    def _palette(self) -> None:
        look = self.look
        self.skin = look.rgb("skin")
        self.skin_shadow = _shade(self.skin, 0.22)
        self.skin_deep = _shade(self.skin, 0.45)
        self.skin_light = _mix(self.skin, WHITE, 0.12)
        self.hair = look.rgb("hair")
        self.hair_shadow = _shade(self.hair, 0.35)
        self.hair_light = _mix(self.hair, WHITE, 0.18 if _luma(self.hair) < 0.5 else 0.3)
        # Brows read best a little darker than the hair, and clearly darker than the skin.
        self.brow = _mix(self.hair, BLACK, 0.2 if _luma(self.hair) < 0.35 else 0.45)
        self.lips = _mix(look.rgb("lips"), self.skin, 0.15)
        self.lips_upper = _shade(self.lips, 0.28)
        self.lips_light = _mix(self.lips, WHITE, 0.22)
        self.mouth_inside = _mix(_shade(look.rgb("lips"), 1.0), BLACK, 0.55)
        self.tongue = _mix(look.rgb("lips"), (0.93, 0.5, 0.52), 0.5)
        self.teeth = (0.98, 0.97, 0.94)
        self.iris = look.rgb("eyes")
        self.iris_dark = _mix(self.iris, BLACK, 0.45)
        self.iris_light = _mix(self.iris, WHITE, 0.22)
        self.sclera = (0.97, 0.965, 0.95)
        self.lash = _mix(_mix(self.hair, BLACK, 0.6), (0.17, 0.11, 0.1), 0.5)
        self.blush = _mix(self.skin, (0.93, 0.45, 0.45), 0.35)
        self.background = look.rgb("background")
        self.clothes = look.rgb("clothes")
        self.clothes_shadow = _shade(self.clothes, 0.35)

    def _draw_background(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rgb = np.empty((*x.shape, 3))
        rgb[:] = self.background
        # A soft light behind the head that fades out well before the corners.
        distance = np.hypot(x - FACE_CX, (y - 110.0) * 1.1)
        glow = np.clip(1.0 - distance / 150.0, 0.0, 1.0) ** 2 * 0.16
        rgb += (np.asarray(WHITE) - rgb) * glow[..., None]
        return rgb

    def _hair_outline(self, canvas: _Canvas) -> tuple[np.ndarray, np.ndarray]:
        """(front hair, back hair) signed distances for the look's hair style."""
        x, y = canvas.x, canvas.y
        style = self.look.hair_style
        nothing = np.full(x.shape, 1e3)
        if style == "bob":
            cap = _distance(np.hypot((x - FACE_CX) / 62.0, (y - 100.0) / 70.0) - 1.0)
            bottom = canvas.above(lambda xs: 156.0 - 0.0016 * (xs - FACE_CX) ** 2 + 3.0)
            outer = _intersect(cap, bottom)
            return outer, nothing
        if style == "long":
            cap = _distance(np.hypot((x - FACE_CX) / 61.0, (y - 101.0) / 69.0) - 1.0)
            curtains = _distance(np.hypot((np.abs(x - FACE_CX) - 52.0) / 16.0, (y - 150.0) / 70.0) - 1.0)
            front = _union(cap, _intersect(curtains, canvas.above(lambda xs: np.full_like(xs, 214.0))))
            back = _distance(np.hypot((x - FACE_CX) / 68.0, (y - 120.0) / 98.0) - 1.0)
            back = _intersect(back, canvas.above(lambda xs: np.full_like(xs, 212.0)))
            return front, back
        if style == "short":
            cap = _distance(np.hypot((x - FACE_CX) / 56.5, (y - 100.0) / 65.0) - 1.0)
            top = canvas.above(lambda xs: np.full_like(xs, 104.0))
            return _intersect(cap, top), nothing
        # bun: a tight cap and a round bun on the crown
        cap = _distance(np.hypot((x - FACE_CX) / 55.5, (y - 100.0) / 64.0) - 1.0)
        top = canvas.above(lambda xs: np.full_like(xs, 100.0))
        bun = canvas.ellipse(FACE_CX, 32.0, 21.0, 17.0)
        return _union(_intersect(cap, top), bun), nothing

    def _hairline(self, x: np.ndarray) -> np.ndarray:
        """Where the hair stops on the forehead, per style (y of the hair's lower edge)."""
        offset = (x - FACE_CX) / FACE_RX
        style = self.look.hair_style
        if style == "bob":
            # Full fringe, gently arched, longer at the sides.
            return 76.0 - 5.0 * np.cos(np.clip(offset, -1.2, 1.2) * 1.3) + 4.0 * offset**2
        if style == "long":
            # Side part at the viewer's left, swept to the right.
            return (
                58.0
                + 24.0 * np.clip((offset + 0.55) / 1.5, 0.0, 1.0) ** 0.8
                + 10.0 * np.clip(-offset - 0.6, 0, 1)
            )
        if style == "short":
            return 64.0 + 3.0 * np.sin(offset * 3.0) + 8.0 * offset**4
        return 62.0 + 6.0 * offset**2  # bun: pulled back

    def _draw_back_hair(self, x: np.ndarray, y: np.ndarray) -> _Canvas:
        canvas = _Canvas(x, y)
        _, back = self._hair_outline(canvas)
        canvas.paint(_coverage(back), self.hair_shadow)
        return canvas

    def _draw_body(self, x: np.ndarray, y: np.ndarray) -> _Canvas:
        canvas = _Canvas(x, y)
        neck = _intersect(
            _distance(np.abs(x - FACE_CX) - (19.0 - 0.02 * np.clip(y - 150, 0, None))),
            _distance(120.0 - y),
        )
        canvas.paint(_coverage(neck), self.skin)
        # Shoulders: flat top at the collar, curving down to the arms.
        reach = np.clip((np.abs(x - FACE_CX) - 30.0) / 100.0, 0.0, 1.5)
        top = 192.0 + 28.0 * reach**1.8 - 4.0 * np.clip(1 - np.abs(x - FACE_CX) / 30.0, 0, 1)
        shoulders = _intersect(_distance(top - y), _distance(np.abs(x - FACE_CX) - 150.0))
        neckline = canvas.ellipse(FACE_CX, 190.0, 23.0, 16.0)
        clothes = _intersect(shoulders, -neckline)
        canvas.paint(_coverage(clothes), self.clothes)
        # Shading hints: the far side of the torso, and a fold under the neckline.
        far_side = _coverage(_distance(FACE_CX + 62.0 - x), softness_px=30.0) * _coverage(clothes)
        canvas.paint(far_side, self.clothes_shadow, 0.35)
        rim = _intersect(clothes, canvas.ellipse(FACE_CX, 190.0, 29.0, 21.0))
        canvas.paint(_coverage(rim), self.clothes_shadow, 0.45)
        return canvas

    def _draw_head(self, x: np.ndarray, y: np.ndarray) -> _Canvas:
        canvas = _Canvas(x, y)
        face = _distance(_face_implicit(x, y))
        # The chin's shadow on the neck (narrower than the neck, so head sway never spills it).
        chin_shadow = _intersect(_distance(_face_implicit(x, y - 9.0)), _distance(np.abs(x - FACE_CX) - 16.0))
        canvas.paint(_coverage(chin_shadow, softness_px=2.0), self.skin_deep, 0.55)
        # Ears, with a darker inner bowl.
        for side in (-1.0, 1.0):
            ear_x = FACE_CX + side * (FACE_RX - 1.0)
            ear = canvas.ellipse(ear_x, 114.0, 8.0, 12.0)
            canvas.paint(_coverage(ear), self.skin)
            inner = canvas.ellipse(ear_x + side * 1.2, 114.5, 4.2, 7.5)
            canvas.paint(_coverage(inner, softness_px=2.0), self.skin_shadow, 0.8)
        canvas.paint(_coverage(face), self.skin)
        # Light from the upper left: a crescent of shade down the right side and under the jaw.
        lit = _distance(_face_implicit(x + 8.0, y + 5.0))
        canvas.paint(_coverage(_intersect(face, -lit), softness_px=3.0), self.skin_shadow, 0.55)
        # Cheeks.
        for side in (-1.0, 1.0):
            cheek = canvas.ellipse(FACE_CX + side * 29.0, 133.0, 9.0, 5.5)
            # Blush reads as pale spots on dark skin at full strength, so it scales with lightness.
            canvas.paint(_coverage(cheek, softness_px=6.0), self.blush, 0.2 + 0.45 * _luma(self.skin))
        self._draw_nose(canvas)
        # Hair, and the shadow it casts on the forehead.
        front, _ = self._hair_outline(canvas)
        window = _intersect(face, canvas.below(self._hairline))
        hair = _intersect(front, -window)
        hair_shadow = _intersect(face, _distance(y - self._hairline(x) - 4.0))
        canvas.paint(_coverage(hair_shadow, softness_px=2.5), self.skin_shadow, 0.7)
        canvas.paint(_coverage(hair), self.hair)
        # Inner shade where the hair frames the face, and a glossy band on the crown.
        inner = _intersect(hair, _distance(_face_implicit(x, y) - 0.18), _distance(y - 150))
        canvas.paint(_coverage(inner, softness_px=4.0), self.hair_shadow, 0.6)
        shine = _intersect(
            hair,
            _distance(np.hypot((x - FACE_CX + 8.0) / 44.0, (y - 82.0) / 44.0) - 1.0),
            -_distance(np.hypot((x - FACE_CX + 8.0) / 38.0, (y - 86.0) / 40.0) - 1.0),
            _distance(y - 70.0),
            _distance(x - FACE_CX - 12.0),
        )
        canvas.paint(_coverage(shine, softness_px=5.0), self.hair_light, 0.5)
        return canvas

    def _draw_nose(self, canvas: _Canvas) -> None:
        x, y = canvas.x, canvas.y
        tip_y = 133.0
        # A soft shadow under and to the right of the tip, and a small highlight on the bridge.
        under = _intersect(
            canvas.ellipse(FACE_CX + 1.5, tip_y, 6.5, 3.6), -canvas.ellipse(FACE_CX, tip_y - 1.6, 6.0, 3.4)
        )
        canvas.paint(_coverage(under, softness_px=1.2), self.skin_deep, 0.85)
        side = _intersect(
            _distance(np.abs(x - (FACE_CX + 4.5 + (y - tip_y) * 0.08)) - 1.1),
            _distance(np.abs(y - 124.0) - 7.0),
        )
        canvas.paint(_coverage(side, softness_px=3.0), self.skin_shadow, 0.7)
        highlight = canvas.ellipse(FACE_CX - 1.5, tip_y - 3.0, 2.0, 1.6)
        canvas.paint(_coverage(highlight, softness_px=2.0), self.skin_light, 0.8)

    # -- the features -------------------------------------------------------------------------

    def _draw_eye(
        self, canvas: _Canvas, centre_x: float, *, blink: float, gaze_x: float, gaze_y: float
    ) -> None:
        x, y = canvas.x, canvas.y
        outward = 1.0 if centre_x > FACE_CX else -1.0

        # An almond: a rounder upper lid than lower, the outer corner a touch higher.
        def upper(xs: np.ndarray) -> np.ndarray:
            lx = (xs - centre_x) / EYE_RX
            return EYE_Y - EYE_RY * np.sqrt(np.clip(1 - lx**2, 0, 1)) ** 0.8 - 0.6 * outward * lx

        def lower(xs: np.ndarray) -> np.ndarray:
            lx = (xs - centre_x) / EYE_RX
            return EYE_Y + EYE_RY * 0.85 * np.sqrt(np.clip(1 - lx**2, 0, 1)) ** 1.1 - 0.6 * outward * lx

        def lid(xs: np.ndarray) -> np.ndarray:
            return upper(xs) + (lower(xs) - upper(xs)) * blink

        bounds = _distance(np.abs(x - centre_x) - EYE_RX)
        eye = _intersect(_distance(upper(x) - y), _distance(y - lower(x)), bounds)
        visible = _intersect(eye, _distance(lid(x) - y))
        if blink < 1.0:
            canvas.paint(_coverage(visible), self.sclera)
            iris_x = centre_x + gaze_x
            iris_y = EYE_Y + 0.4 + gaze_y
            iris = _intersect(canvas.circle(iris_x, iris_y, IRIS_R, self.scale), visible)
            canvas.paint(_coverage(iris), self.iris_dark)
            inner_iris = _intersect(canvas.circle(iris_x, iris_y, IRIS_R - 0.9, self.scale), visible)
            canvas.paint(_coverage(inner_iris), self.iris)
            lower_glow = _intersect(canvas.circle(iris_x, iris_y + 2.2, IRIS_R - 2.0, self.scale), inner_iris)
            canvas.paint(_coverage(lower_glow, softness_px=2.0), self.iris_light, 0.6)
            pupil = _intersect(canvas.circle(iris_x, iris_y, PUPIL_R, self.scale), visible)
            canvas.paint(_coverage(pupil), (0.07, 0.07, 0.09))
            glint = _intersect(canvas.circle(iris_x - 1.6, iris_y - 1.8, 1.25, self.scale), visible)
            canvas.paint(_coverage(glint), WHITE, 0.95)
            # The upper lid's shadow on the eyeball.
            lid_shadow = _intersect(visible, _distance(y - lid(x) - 1.8))
            canvas.paint(_coverage(lid_shadow, softness_px=1.5), self.lash, 0.22)
        # The lid itself, then the lash line along its edge (thicker at the outer corner).
        covered = _intersect(eye, _distance(y - lid(x)))
        canvas.paint(_coverage(covered), self.skin_shadow, 0.5)
        weight = 1.0 + 0.7 * np.clip(outward * (x - centre_x) / EYE_RX, 0.0, 1.0)
        line = _intersect(
            _distance(np.abs(y - lid(x) + 0.2) - 0.85 * weight),
            _distance(np.abs(x - centre_x) - EYE_RX - 0.6),
        )
        canvas.paint(_coverage(line), self.lash)
        flick_x = centre_x + outward * (EYE_RX + 0.2)
        flick_y = lid(np.array([centre_x + outward * EYE_RX]))[0]
        t = np.clip((x - flick_x) * outward / 3.2, 0.0, 1.0)
        flick = _intersect(
            _distance(np.abs(y - (flick_y - 0.2 - 1.6 * t)) - 1.0 * (1 - t) - 0.15),
            _distance(np.abs(x - flick_x - outward * 1.6) - 1.6),
        )
        if blink < 0.6:
            canvas.paint(_coverage(flick), self.lash)
        # A faint crease above an open eye.
        if blink < 0.5:
            crease = _intersect(
                _distance(np.abs(y - (upper(x) - 2.3)) - 0.45),
                _distance(np.abs(x - centre_x) - EYE_RX * 0.75),
            )
            canvas.paint(_coverage(crease, softness_px=1.3), self.skin_deep, 0.45 * (1 - 2 * blink))

    def _draw_brow(self, canvas: _Canvas, *, left_side: bool, raise_amount: float) -> None:
        x, y = canvas.x, canvas.y
        centre_x = FACE_CX + (-EYE_DX if left_side else EYE_DX) + (-0.5 if left_side else 0.5)
        outward = -1.0 if left_side else 1.0
        half = 10.5
        local = (x - centre_x) / half  # -1..1
        along = np.clip(local * outward, -1.0, 1.0)  # -1 at the inner end, +1 at the outer
        # Inner ends rise more than outer ones: the friendly, attentive look.
        lift = BROW_RAISE_PX * raise_amount * (1.0 - 0.35 * along)
        centre_line = BROW_Y - 2.6 * (1.0 - ((along - 0.15) / 1.15) ** 2) + 0.5 * along - lift
        thickness = 1.55 * (1.0 - 0.45 * (along + 1) / 2) + 0.25
        slope = np.gradient(centre_line, axis=1)
        band = (np.abs(y - centre_line) - thickness) / np.sqrt(1 + slope**2)
        brow = np.maximum(band * self.scale, _distance(np.abs(x - centre_x) - half))
        canvas.paint(_coverage(brow), self.brow)

    def _draw_mouth(self, canvas: _Canvas, *, shape: Viseme, openness: float) -> None:
        x, y = canvas.x, canvas.y
        spec = _MOUTH_SHAPES[shape]
        half = spec.half_width * (1.0 - 0.1 * openness if shape is Viseme.OPEN else 1.0)
        if shape is Viseme.ROUND:
            half = spec.half_width + 1.5 * openness
        gap = spec.rest_gap * min(openness * 4.0, 1.0)
        up = gap * 0.4 + spec.open_up * openness
        down = gap * 0.6 + spec.open_down * openness
        outer_half = half + spec.corner

        def smile(xs: np.ndarray, width: float) -> np.ndarray:
            return MOUTH_Y - spec.smile * np.clip(np.abs(xs - FACE_CX) / width, 0, 1) ** 2

        def profile(xs: np.ndarray, width: float, power: float) -> np.ndarray:
            return np.clip(1.0 - ((xs - FACE_CX) / width) ** 2, 0.0, 1.0) ** power

        def inner_upper(xs: np.ndarray) -> np.ndarray:
            return smile(xs, half) - up * profile(xs, half, spec.roundness * 0.8)

        def inner_lower(xs: np.ndarray) -> np.ndarray:
            return smile(xs, half) + down * profile(xs, half, spec.roundness)

        def outer_upper(xs: np.ndarray) -> np.ndarray:
            # A soft Cupid's bow: the upper lip dips slightly at the centre.
            bow = 0.7 * np.exp(-(((xs - FACE_CX) / 2.2) ** 2))
            return smile(xs, outer_half) - (up + spec.lip_up) * profile(xs, outer_half, 0.55) + bow

        def outer_lower(xs: np.ndarray) -> np.ndarray:
            return smile(xs, outer_half) + (down + spec.lip_down) * profile(xs, outer_half, 0.6)

        sides = _distance(np.abs(x - FACE_CX) - outer_half)
        lips = _intersect(_distance(outer_upper(x) - y), _distance(y - outer_lower(x)), sides)
        parting = smile(x, half)
        upper_lip = _intersect(lips, _distance(y - parting))
        canvas.paint(_coverage(lips), self.lips)
        canvas.paint(_coverage(upper_lip), self.lips_upper)
        shine = canvas.ellipse(
            FACE_CX - 2.0, outer_lower(np.array([FACE_CX]))[0] - spec.lip_down * 0.45, half * 0.35, 0.9
        )
        canvas.paint(_coverage(shine, softness_px=1.8), self.lips_light, 0.6)
        if up + down < 0.35:
            # Lips together: a dark line where they meet, fading towards the corners.
            line = _intersect(
                _distance(np.abs(y - parting) - 0.55), _distance(np.abs(x - FACE_CX) - half - 0.5)
            )
            fade = np.clip(1.3 - np.abs(x - FACE_CX) / (half + 0.5), 0.35, 1.0)
            canvas.paint(_coverage(line) * fade, self.mouth_inside, 0.9)
        else:
            opening = _intersect(
                _distance(inner_upper(x) - y),
                _distance(y - inner_lower(x)),
                _distance(np.abs(x - FACE_CX) - half),
            )
            canvas.paint(_coverage(opening), self.mouth_inside)
            if spec.tongue and openness > 0.25:
                tongue = _intersect(
                    canvas.ellipse(
                        FACE_CX,
                        inner_lower(np.array([FACE_CX]))[0] + 1.0,
                        half * 0.55,
                        spec.tongue * openness + 1.0,
                    ),
                    opening,
                )
                canvas.paint(_coverage(tongue), self.tongue)
            if spec.teeth_up:
                depth = min(spec.teeth_up, up + down - 0.3)
                teeth = _intersect(
                    opening,
                    _distance(y - inner_upper(x) - depth),
                    _distance(np.abs(x - FACE_CX) - half * 0.78),
                )
                canvas.paint(_coverage(teeth), self.teeth)
            if spec.teeth_down:
                depth = min(spec.teeth_down, max(up + down - spec.teeth_up - 1.0, 0.0))
                teeth = _intersect(
                    opening,
                    _distance(inner_lower(x) - depth - y),
                    _distance(np.abs(x - FACE_CX) - half * 0.7),
                )
                canvas.paint(_coverage(teeth), self.teeth, 0.95)
        if shape is Viseme.TEETH_ON_LIP:
            # Upper teeth resting on the tucked lower lip.
            top_edge = inner_upper(x)
            bite = _intersect(
                _distance(top_edge - 0.2 - y),
                _distance(y - top_edge - 0.6 - spec.teeth_up * (0.7 + 0.3 * openness)),
                _distance(np.abs(x - FACE_CX) - half * 0.62),
            )
            canvas.paint(_coverage(bite), self.teeth)
        # Dimples at the corners keep the mouth readable at small sizes.
        for side in (-1.0, 1.0):
            corner = canvas.circle(
                FACE_CX + side * (outer_half - 0.4),
                smile(np.array([FACE_CX + outer_half]), outer_half)[0],
                0.9,
                self.scale,
            )
            canvas.paint(_coverage(corner, softness_px=1.6), self.skin_deep, 0.45)


def _shift(layer: _Canvas, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """The layer moved by whole pixels; what moves in from outside is transparent."""
    if dx == 0 and dy == 0:
        return layer.rgb, layer.alpha
    rgb = np.zeros_like(layer.rgb)
    alpha = np.zeros_like(layer.alpha)
    height, width = alpha.shape
    src_y = slice(max(0, -dy), min(height, height - dy))
    dst_y = slice(max(0, dy), min(height, height + dy))
    src_x = slice(max(0, -dx), min(width, width - dx))
    dst_x = slice(max(0, dx), min(width, width + dx))
    rgb[dst_y, dst_x] = layer.rgb[src_y, src_x]
    alpha[dst_y, dst_x] = layer.alpha[src_y, src_x]
    return rgb, alpha
