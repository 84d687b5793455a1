"""The drawn face: a renderer that draws a `FaceLook` in YUV, its expensive layers shared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from calls.pipeline.avatar.cache import LOOKS, BoundedCache
from calls.pipeline.avatar.look import HAIR_STYLES, FaceLook, FaceState, Viseme
from calls.pipeline.avatar.raster import (
    BLACK,
    WHITE,
    Canvas,
    coverage,
    distance,
    intersect,
    luminance,
    mix,
    over,
    rgb_to_yuv420,
    shade,
    union,
    yuv_to_rgb,
)

__all__ = ["HAIR_STYLES", "FaceLook", "FaceRenderer", "FaceState", "Viseme", "rgb_to_yuv420", "yuv_to_rgb"]

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
# about 3 MB of bases and at most ~3 MB of patches per look.
BASE_CACHE_ENTRIES = (2 * MAX_HEAD_OFFSET_PX + 1) ** 2  # all of them: a miss costs ~5 ms
PATCH_CACHE_ENTRIES = 1500


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

Layer = tuple[np.ndarray, np.ndarray]  # premultiplied RGB (H, W, 3) and alpha (H, W), float32
Patch = tuple[int, int, np.ndarray, np.ndarray, np.ndarray]  # left, top, Y, U, V


def plane_views(buffer: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U and V views into one (height * 3 / 2, width) yuv420p buffer."""
    chroma = (height // 2) * (width // 2)
    flat = buffer.reshape(-1)
    luma = flat[: width * height].reshape(height, width)
    u = flat[width * height : width * height + chroma].reshape(height // 2, width // 2)
    v = flat[width * height + chroma :].reshape(height // 2, width // 2)
    return luma, u, v


def paste(planes: tuple[np.ndarray, np.ndarray, np.ndarray], patch: Patch, dx: int = 0, dy: int = 0) -> None:
    """Copy a patch (which starts on an even pixel once offset) into a frame's planes."""
    left, top, luma, u, v = patch
    left += dx
    top += dy
    y_plane, u_plane, v_plane = planes
    height, width = y_plane.shape
    if left < 0 or top < 0 or left + luma.shape[1] > width or top + luma.shape[0] > height:
        return  # only at tiny frame sizes; the feature is simply not drawn
    y_plane[top : top + luma.shape[0], left : left + luma.shape[1]] = luma
    u_plane[top // 2 : top // 2 + u.shape[0], left // 2 : left // 2 + u.shape[1]] = u
    v_plane[top // 2 : top // 2 + v.shape[0], left // 2 : left // 2 + v.shape[1]] = v


class FaceRenderer:
    """Draws a `FaceState` as a yuv420p `av.VideoFrame`.

    Everything that does not move with the face's expression (background, body, head, hair) is
    drawn once per head offset and cached as YUV planes; per frame, only the eye, brow and mouth
    patches are pasted over it, each drawn once per quantised state and cached too. All of that
    lives in a `FaceLayers` shared by every renderer of the same look and size; a renderer itself
    only decides which pieces a frame is made of.
    """

    def __init__(self, look: FaceLook | Mapping[str, Any] | None = None, width: int = 320, height: int = 240):
        self.look = look if isinstance(look, FaceLook) else FaceLook.from_dict(look)
        self.width, self.height = width, height
        self.layers = face_layers(self.look, width, height)
        self.scale = self.layers.scale

    def render(self, state: FaceState) -> av.VideoFrame:
        """One frame for this state."""
        return av.VideoFrame.from_ndarray(self.render_planes(state), format="yuv420p")

    def frame_key(self, state: FaceState) -> tuple[Any, ...]:
        """What a frame is drawn from, quantised: equal keys give identical frames."""
        limit = MAX_HEAD_OFFSET_PX
        return (
            round(min(max(state.head_dx * self.scale, -limit), limit)),
            round(min(max(state.head_dy * self.scale, -limit), limit)),
            round(min(max(state.blink, 0.0), 1.0) * BLINK_STEPS) / BLINK_STEPS,
            round(min(max(state.gaze_dx, -MAX_GAZE_X_PX), MAX_GAZE_X_PX) / GAZE_STEP_PX) * GAZE_STEP_PX,
            round(min(max(state.gaze_dy, -MAX_GAZE_Y_PX), MAX_GAZE_Y_PX) / GAZE_STEP_PX) * GAZE_STEP_PX,
            round(min(max(state.brow_raise, 0.0), 1.0) * BROW_STEPS) / BROW_STEPS,
            round(min(max(state.mouth_open, 0.0), 1.0) * MOUTH_OPEN_STEPS) / MOUTH_OPEN_STEPS,
            Viseme(state.mouth_shape),
        )

    def render_planes(self, state: FaceState) -> np.ndarray:
        """The frame as one (height * 3 / 2, width) uint8 array: Y, then U, then V."""
        dx, dy, blink, gaze_x, gaze_y, brow, mouth, shape = self.frame_key(state)
        buffer = self.layers.base(dx, dy).copy()
        planes = plane_views(buffer, self.width, self.height)
        for side in ("left", "right"):
            paste(planes, self.layers.patch(("eye_" + side, blink, gaze_x, gaze_y), dx, dy), dx, dy)
            paste(planes, self.layers.patch(("brow_" + side, brow), dx, dy), dx, dy)
        paste(planes, self.layers.patch(("mouth", shape, mouth), dx, dy), dx, dy)
        return buffer

    def prepare_speech(self) -> int:
        """Draw now every mouth patch speech uses: each viseme at each openness, for either
        parity of the head's offset. Returns how many.

        A talking face otherwise draws them during its first sentences, on the event loop (a
        frame with a new patch took ~1 ms against ~0.15 ms: `bench/avatar_render.py`); with 8
        calls greeted at once by a process that had just started, drawing them was a tenth of
        its samples (py-spy). The patches are shared by every session of the look.
        """
        count = 0
        for shape in Viseme:
            for step in range(MOUTH_OPEN_STEPS + 1):
                for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    self.layers.patch(("mouth", shape, step / MOUTH_OPEN_STEPS), dx, dy)
                    count += 1
        return count

    def feature_box(self, name: str) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels at head offset 0 of a feature patch: eye_left, brow_right, mouth..."""
        x0, y0, width, height = self.layers.patch_rects[name]
        return x0 - 1, y0 - 1, x0 + width + 1, y0 + height + 1


def face_layers(look: FaceLook, width: int, height: int) -> FaceLayers:
    """The shared layers of a drawn look at a frame size: drawn on first use, then reused."""
    return LOOKS.get(("face", look, width, height), lambda: FaceLayers(look, width, height))


def face_layers_cached(look: FaceLook, width: int, height: int) -> bool:
    """Whether `face_layers` would answer at once."""
    return ("face", look, width, height) in LOOKS


class FaceLayers:
    """A drawn look at one frame size: its still layers, and caches of the bases and feature
    patches frames are made of. Nothing in it changes once drawn, so one serves every session
    of the look; the caches are thread-safe."""

    def __init__(self, look: FaceLook, width: int, height: int) -> None:
        if width % 2 or height % 2 or width < 32 or height < 32:
            raise ValueError("width and height must be even and at least 32")
        self.look = look
        self.width, self.height = width, height
        self.scale = min(width / DESIGN_WIDTH, height / DESIGN_HEIGHT)
        self._origin_x = (width - DESIGN_WIDTH * self.scale) / 2
        self._origin_y = (height - DESIGN_HEIGHT * self.scale) / 2
        self._palette()
        x, y = self._grid(0, 0, width, height)
        background = self._draw_background(x, y)
        back_hair = self._draw_back_hair(x, y)
        body = self._draw_body(x, y)
        head = self._draw_head(x, y)
        self.patch_rects = {
            "eye_left": self._pixel_rect(_EYE_RECT, FACE_CX - EYE_DX),
            "eye_right": self._pixel_rect(_EYE_RECT, FACE_CX + EYE_DX),
            "brow_left": self._pixel_rect(_BROW_RECT, FACE_CX - EYE_DX),
            "brow_right": self._pixel_rect(_BROW_RECT, FACE_CX + EYE_DX),
            "mouth": self._pixel_rect(_MOUTH_RECT, 0.0),
        }
        # The face as it sits still, without features: what every feature patch is drawn over.
        # Only the patches' rectangles of it are kept (with their 1 px margin).
        still = over(over(over(background, back_hair), body), head)
        self._still_crops = {
            name: still[top - 1 : top + rect_height + 1, left - 1 : left + rect_width + 1].copy()
            for name, (left, top, rect_width, rect_height) in self.patch_rects.items()
        }
        # Kept in float32 for the bases still to be made (half the memory; the output is 8 bit).
        self._background = background.astype(np.float32)
        self._back_hair = _compact(back_hair)
        self._body = _compact(body)
        self._head = _compact(head)
        self._bases = BoundedCache(BASE_CACHE_ENTRIES)
        self._patches = BoundedCache(PATCH_CACHE_ENTRIES)

    def base(self, dx: int, dy: int) -> np.ndarray:
        """The frame without features at a head offset, as one yuv420p buffer (do not modify)."""
        return self._bases.get((dx, dy), lambda: self._draw_base(dx, dy))

    def patch(self, key: tuple[Any, ...], dx: int, dy: int) -> Patch:
        """A feature's patch, e.g. ("mouth", shape, openness), for a head offset (do not modify)."""
        x0, y0, _width, _height = self.patch_rects[key[0]]
        # A patch is drawn with a 1 px margin so it can start on an even pixel at any offset:
        # chroma covers 2x2 blocks, and an odd head offset would otherwise split them.
        odd_x, odd_y = (x0 - 1 + dx) % 2, (y0 - 1 + dy) % 2
        return self._patches.get((*key, odd_x, odd_y), lambda: self._draw_patch(key, odd_x, odd_y))

    @property
    def nbytes(self) -> int:
        """Memory held by the layers and what the caches hold now (for the benchmark)."""
        arrays = [self._background, *self._still_crops.values()]
        for layer in (self._back_hair, self._body, self._head):
            if layer is not None:
                arrays.extend(layer)
        total = sum(array.nbytes for array in arrays)
        total += sum(base.nbytes for base in self._bases.values())
        total += sum(sum(part.nbytes for part in patch[2:]) for patch in self._patches.values())
        return total

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

    # -- what the caches are filled with ----------------------------------------------------

    def _draw_base(self, dx: int, dy: int) -> np.ndarray:
        rgb = self._background
        for layer in (_shift(self._back_hair, dx, dy), self._body, _shift(self._head, dx, dy)):
            if layer is not None:
                rgb = over(rgb, layer)
        luma, u, v = rgb_to_yuv420(rgb)
        return np.concatenate([luma.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(-1, self.width)

    def _draw_patch(self, key: tuple[Any, ...], odd_x: int, odd_y: int) -> Patch:
        name = key[0]
        x0, y0, width, height = self.patch_rects[name]
        left, top = x0 - 1, y0 - 1
        x, y = self._grid(left, top, width + 2, height + 2)
        canvas = Canvas(x, y, self._still_crops[name])
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
        self.skin_shadow = shade(self.skin, 0.22)
        self.skin_deep = shade(self.skin, 0.45)
        self.skin_light = mix(self.skin, WHITE, 0.12)
        self.hair = look.rgb("hair")
        self.hair_shadow = shade(self.hair, 0.35)
        self.hair_light = mix(self.hair, WHITE, 0.18 if luminance(self.hair) < 0.5 else 0.3)
        # Brows read best a little darker than the hair, and clearly darker than the skin.
        self.brow = mix(self.hair, BLACK, 0.2 if luminance(self.hair) < 0.35 else 0.45)
        self.lips = mix(look.rgb("lips"), self.skin, 0.15)
        self.lips_upper = shade(self.lips, 0.28)
        self.lips_light = mix(self.lips, WHITE, 0.22)
        self.mouth_inside = mix(shade(look.rgb("lips"), 1.0), BLACK, 0.55)
        self.tongue = mix(look.rgb("lips"), (0.93, 0.5, 0.52), 0.5)
        self.teeth = (0.98, 0.97, 0.94)
        self.iris = look.rgb("eyes")
        self.iris_dark = mix(self.iris, BLACK, 0.45)
        self.iris_light = mix(self.iris, WHITE, 0.22)
        self.sclera = (0.97, 0.965, 0.95)
        self.lash = mix(mix(self.hair, BLACK, 0.6), (0.17, 0.11, 0.1), 0.5)
        self.blush = mix(self.skin, (0.93, 0.45, 0.45), 0.35)
        self.background = look.rgb("background")
        self.clothes = look.rgb("clothes")
        self.clothes_shadow = shade(self.clothes, 0.35)

    def _draw_background(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rgb = np.empty((*x.shape, 3))
        rgb[:] = self.background
        # A soft light behind the head that fades out well before the corners.
        reach = np.hypot(x - FACE_CX, (y - 110.0) * 1.1)
        glow = np.clip(1.0 - reach / 150.0, 0.0, 1.0) ** 2 * 0.16
        rgb += (np.asarray(WHITE) - rgb) * glow[..., None]
        return rgb

    def _hair_outline(self, canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
        """(front hair, back hair) signed distances for the look's hair style."""
        x, y = canvas.x, canvas.y
        style = self.look.hair_style
        nothing = np.full(x.shape, 1e3)
        if style == "bob":
            cap = distance(np.hypot((x - FACE_CX) / 62.0, (y - 100.0) / 70.0) - 1.0)
            bottom = canvas.above(lambda xs: 156.0 - 0.0016 * (xs - FACE_CX) ** 2 + 3.0)
            outer = intersect(cap, bottom)
            return outer, nothing
        if style == "long":
            cap = distance(np.hypot((x - FACE_CX) / 61.0, (y - 101.0) / 69.0) - 1.0)
            curtains = distance(np.hypot((np.abs(x - FACE_CX) - 52.0) / 16.0, (y - 150.0) / 70.0) - 1.0)
            front = union(cap, intersect(curtains, canvas.above(lambda xs: np.full_like(xs, 214.0))))
            back = distance(np.hypot((x - FACE_CX) / 68.0, (y - 120.0) / 98.0) - 1.0)
            back = intersect(back, canvas.above(lambda xs: np.full_like(xs, 212.0)))
            return front, back
        if style == "short":
            cap = distance(np.hypot((x - FACE_CX) / 56.5, (y - 100.0) / 65.0) - 1.0)
            top = canvas.above(lambda xs: np.full_like(xs, 104.0))
            return intersect(cap, top), nothing
        # bun: a tight cap and a round bun on the crown
        cap = distance(np.hypot((x - FACE_CX) / 55.5, (y - 100.0) / 64.0) - 1.0)
        top = canvas.above(lambda xs: np.full_like(xs, 100.0))
        bun = canvas.ellipse(FACE_CX, 32.0, 21.0, 17.0)
        return union(intersect(cap, top), bun), nothing

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

    def _draw_back_hair(self, x: np.ndarray, y: np.ndarray) -> Canvas:
        canvas = Canvas(x, y)
        _, back = self._hair_outline(canvas)
        canvas.paint(coverage(back), self.hair_shadow)
        return canvas

    def _draw_body(self, x: np.ndarray, y: np.ndarray) -> Canvas:
        canvas = Canvas(x, y)
        neck = intersect(
            distance(np.abs(x - FACE_CX) - (19.0 - 0.02 * np.clip(y - 150, 0, None))),
            distance(120.0 - y),
        )
        canvas.paint(coverage(neck), self.skin)
        # Shoulders: flat top at the collar, curving down to the arms.
        reach = np.clip((np.abs(x - FACE_CX) - 30.0) / 100.0, 0.0, 1.5)
        top = 192.0 + 28.0 * reach**1.8 - 4.0 * np.clip(1 - np.abs(x - FACE_CX) / 30.0, 0, 1)
        shoulders = intersect(distance(top - y), distance(np.abs(x - FACE_CX) - 150.0))
        neckline = canvas.ellipse(FACE_CX, 190.0, 23.0, 16.0)
        clothes = intersect(shoulders, -neckline)
        canvas.paint(coverage(clothes), self.clothes)
        # Shading hints: the far side of the torso, and a fold under the neckline.
        far_side = coverage(distance(FACE_CX + 62.0 - x), softness_px=30.0) * coverage(clothes)
        canvas.paint(far_side, self.clothes_shadow, 0.35)
        rim = intersect(clothes, canvas.ellipse(FACE_CX, 190.0, 29.0, 21.0))
        canvas.paint(coverage(rim), self.clothes_shadow, 0.45)
        return canvas

    def _draw_head(self, x: np.ndarray, y: np.ndarray) -> Canvas:
        canvas = Canvas(x, y)
        face = distance(_face_implicit(x, y))
        # The chin's shadow on the neck (narrower than the neck, so head sway never spills it).
        chin_shadow = intersect(distance(_face_implicit(x, y - 9.0)), distance(np.abs(x - FACE_CX) - 16.0))
        canvas.paint(coverage(chin_shadow, softness_px=2.0), self.skin_deep, 0.55)
        # Ears, with a darker inner bowl.
        for side in (-1.0, 1.0):
            ear_x = FACE_CX + side * (FACE_RX - 1.0)
            ear = canvas.ellipse(ear_x, 114.0, 8.0, 12.0)
            canvas.paint(coverage(ear), self.skin)
            inner = canvas.ellipse(ear_x + side * 1.2, 114.5, 4.2, 7.5)
            canvas.paint(coverage(inner, softness_px=2.0), self.skin_shadow, 0.8)
        canvas.paint(coverage(face), self.skin)
        # Light from the upper left: a crescent of shade down the right side and under the jaw.
        lit = distance(_face_implicit(x + 8.0, y + 5.0))
        canvas.paint(coverage(intersect(face, -lit), softness_px=3.0), self.skin_shadow, 0.55)
        # Cheeks.
        for side in (-1.0, 1.0):
            cheek = canvas.ellipse(FACE_CX + side * 29.0, 133.0, 9.0, 5.5)
            # Blush reads as pale spots on dark skin at full strength, so it scales with lightness.
            canvas.paint(coverage(cheek, softness_px=6.0), self.blush, 0.2 + 0.45 * luminance(self.skin))
        self._draw_nose(canvas)
        # Hair, and the shadow it casts on the forehead.
        front, _ = self._hair_outline(canvas)
        window = intersect(face, canvas.below(self._hairline))
        hair = intersect(front, -window)
        hair_shadow = intersect(face, distance(y - self._hairline(x) - 4.0))
        canvas.paint(coverage(hair_shadow, softness_px=2.5), self.skin_shadow, 0.7)
        canvas.paint(coverage(hair), self.hair)
        # Inner shade where the hair frames the face, and a glossy band on the crown.
        inner = intersect(hair, distance(_face_implicit(x, y) - 0.18), distance(y - 150))
        canvas.paint(coverage(inner, softness_px=4.0), self.hair_shadow, 0.6)
        shine = intersect(
            hair,
            distance(np.hypot((x - FACE_CX + 8.0) / 44.0, (y - 82.0) / 44.0) - 1.0),
            -distance(np.hypot((x - FACE_CX + 8.0) / 38.0, (y - 86.0) / 40.0) - 1.0),
            distance(y - 70.0),
            distance(x - FACE_CX - 12.0),
        )
        canvas.paint(coverage(shine, softness_px=5.0), self.hair_light, 0.5)
        return canvas

    def _draw_nose(self, canvas: Canvas) -> None:
        x, y = canvas.x, canvas.y
        tip_y = 133.0
        # A soft shadow under and to the right of the tip, and a small highlight on the bridge.
        under = intersect(
            canvas.ellipse(FACE_CX + 1.5, tip_y, 6.5, 3.6), -canvas.ellipse(FACE_CX, tip_y - 1.6, 6.0, 3.4)
        )
        canvas.paint(coverage(under, softness_px=1.2), self.skin_deep, 0.85)
        side = intersect(
            distance(np.abs(x - (FACE_CX + 4.5 + (y - tip_y) * 0.08)) - 1.1),
            distance(np.abs(y - 124.0) - 7.0),
        )
        canvas.paint(coverage(side, softness_px=3.0), self.skin_shadow, 0.7)
        highlight = canvas.ellipse(FACE_CX - 1.5, tip_y - 3.0, 2.0, 1.6)
        canvas.paint(coverage(highlight, softness_px=2.0), self.skin_light, 0.8)

    # -- the features -------------------------------------------------------------------------

    def _draw_eye(
        self, canvas: Canvas, centre_x: float, *, blink: float, gaze_x: float, gaze_y: float
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

        bounds = distance(np.abs(x - centre_x) - EYE_RX)
        eye = intersect(distance(upper(x) - y), distance(y - lower(x)), bounds)
        visible = intersect(eye, distance(lid(x) - y))
        if blink < 1.0:
            canvas.paint(coverage(visible), self.sclera)
            iris_x = centre_x + gaze_x
            iris_y = EYE_Y + 0.4 + gaze_y
            iris = intersect(canvas.circle(iris_x, iris_y, IRIS_R, self.scale), visible)
            canvas.paint(coverage(iris), self.iris_dark)
            inner_iris = intersect(canvas.circle(iris_x, iris_y, IRIS_R - 0.9, self.scale), visible)
            canvas.paint(coverage(inner_iris), self.iris)
            lower_glow = intersect(canvas.circle(iris_x, iris_y + 2.2, IRIS_R - 2.0, self.scale), inner_iris)
            canvas.paint(coverage(lower_glow, softness_px=2.0), self.iris_light, 0.6)
            pupil = intersect(canvas.circle(iris_x, iris_y, PUPIL_R, self.scale), visible)
            canvas.paint(coverage(pupil), (0.07, 0.07, 0.09))
            glint = intersect(canvas.circle(iris_x - 1.6, iris_y - 1.8, 1.25, self.scale), visible)
            canvas.paint(coverage(glint), WHITE, 0.95)
            # The upper lid's shadow on the eyeball.
            lid_shadow = intersect(visible, distance(y - lid(x) - 1.8))
            canvas.paint(coverage(lid_shadow, softness_px=1.5), self.lash, 0.22)
        # The lid itself, then the lash line along its edge (thicker at the outer corner).
        covered = intersect(eye, distance(y - lid(x)))
        canvas.paint(coverage(covered), self.skin_shadow, 0.5)
        weight = 1.0 + 0.7 * np.clip(outward * (x - centre_x) / EYE_RX, 0.0, 1.0)
        line = intersect(
            distance(np.abs(y - lid(x) + 0.2) - 0.85 * weight),
            distance(np.abs(x - centre_x) - EYE_RX - 0.6),
        )
        canvas.paint(coverage(line), self.lash)
        flick_x = centre_x + outward * (EYE_RX + 0.2)
        flick_y = lid(np.array([centre_x + outward * EYE_RX]))[0]
        t = np.clip((x - flick_x) * outward / 3.2, 0.0, 1.0)
        flick = intersect(
            distance(np.abs(y - (flick_y - 0.2 - 1.6 * t)) - 1.0 * (1 - t) - 0.15),
            distance(np.abs(x - flick_x - outward * 1.6) - 1.6),
        )
        if blink < 0.6:
            canvas.paint(coverage(flick), self.lash)
        # A faint crease above an open eye.
        if blink < 0.5:
            crease = intersect(
                distance(np.abs(y - (upper(x) - 2.3)) - 0.45),
                distance(np.abs(x - centre_x) - EYE_RX * 0.75),
            )
            canvas.paint(coverage(crease, softness_px=1.3), self.skin_deep, 0.45 * (1 - 2 * blink))

    def _draw_brow(self, canvas: Canvas, *, left_side: bool, raise_amount: float) -> None:
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
        brow = np.maximum(band * self.scale, distance(np.abs(x - centre_x) - half))
        canvas.paint(coverage(brow), self.brow)

    def _draw_mouth(self, canvas: Canvas, *, shape: Viseme, openness: float) -> None:
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

        sides = distance(np.abs(x - FACE_CX) - outer_half)
        lips = intersect(distance(outer_upper(x) - y), distance(y - outer_lower(x)), sides)
        parting = smile(x, half)
        upper_lip = intersect(lips, distance(y - parting))
        canvas.paint(coverage(lips), self.lips)
        canvas.paint(coverage(upper_lip), self.lips_upper)
        shine = canvas.ellipse(
            FACE_CX - 2.0, outer_lower(np.array([FACE_CX]))[0] - spec.lip_down * 0.45, half * 0.35, 0.9
        )
        canvas.paint(coverage(shine, softness_px=1.8), self.lips_light, 0.6)
        if up + down < 0.35:
            # Lips together: a dark line where they meet, fading towards the corners.
            line = intersect(distance(np.abs(y - parting) - 0.55), distance(np.abs(x - FACE_CX) - half - 0.5))
            fade = np.clip(1.3 - np.abs(x - FACE_CX) / (half + 0.5), 0.35, 1.0)
            canvas.paint(coverage(line) * fade, self.mouth_inside, 0.9)
        else:
            opening = intersect(
                distance(inner_upper(x) - y),
                distance(y - inner_lower(x)),
                distance(np.abs(x - FACE_CX) - half),
            )
            canvas.paint(coverage(opening), self.mouth_inside)
            if spec.tongue and openness > 0.25:
                tongue = intersect(
                    canvas.ellipse(
                        FACE_CX,
                        inner_lower(np.array([FACE_CX]))[0] + 1.0,
                        half * 0.55,
                        spec.tongue * openness + 1.0,
                    ),
                    opening,
                )
                canvas.paint(coverage(tongue), self.tongue)
            if spec.teeth_up:
                depth = min(spec.teeth_up, up + down - 0.3)
                teeth = intersect(
                    opening,
                    distance(y - inner_upper(x) - depth),
                    distance(np.abs(x - FACE_CX) - half * 0.78),
                )
                canvas.paint(coverage(teeth), self.teeth)
            if spec.teeth_down:
                depth = min(spec.teeth_down, max(up + down - spec.teeth_up - 1.0, 0.0))
                teeth = intersect(
                    opening,
                    distance(inner_lower(x) - depth - y),
                    distance(np.abs(x - FACE_CX) - half * 0.7),
                )
                canvas.paint(coverage(teeth), self.teeth, 0.95)
        if shape is Viseme.TEETH_ON_LIP:
            # Upper teeth resting on the tucked lower lip.
            top_edge = inner_upper(x)
            bite = intersect(
                distance(top_edge - 0.2 - y),
                distance(y - top_edge - 0.6 - spec.teeth_up * (0.7 + 0.3 * openness)),
                distance(np.abs(x - FACE_CX) - half * 0.62),
            )
            canvas.paint(coverage(bite), self.teeth)
        # Dimples at the corners keep the mouth readable at small sizes.
        for side in (-1.0, 1.0):
            corner = canvas.circle(
                FACE_CX + side * (outer_half - 0.4),
                smile(np.array([FACE_CX + outer_half]), outer_half)[0],
                0.9,
                self.scale,
            )
            canvas.paint(coverage(corner, softness_px=1.6), self.skin_deep, 0.45)


def _compact(canvas: Canvas) -> Layer | None:
    """A drawn layer without its coordinate grids, in float32; None if nothing was drawn on it."""
    if not canvas.alpha.any():
        return None
    return canvas.rgb.astype(np.float32), canvas.alpha.astype(np.float32)


def _shift(layer: Layer | None, dx: int, dy: int) -> Layer | None:
    """The layer moved by whole pixels; what moves in from outside is transparent."""
    if layer is None or (dx == 0 and dy == 0):
        return layer
    rgb, alpha = layer
    moved_rgb = np.zeros_like(rgb)
    moved_alpha = np.zeros_like(alpha)
    height, width = alpha.shape
    src_y = slice(max(0, -dy), min(height, height - dy))
    dst_y = slice(max(0, dy), min(height, height + dy))
    src_x = slice(max(0, -dx), min(width, width - dx))
    dst_x = slice(max(0, dx), min(width, width + dx))
    moved_rgb[dst_y, dst_x] = rgb[src_y, src_x]
    moved_alpha[dst_y, dst_x] = alpha[src_y, src_x]
    return moved_rgb, moved_alpha
