"""An uploaded portrait, animated: it breathes, its mouth moves with the speech, its eyes blink.

The picture is framed on the face and scaled once per breathing zoom level into YUV planes,
shared by every session of the look like the drawn face's layers. Per frame, the renderer copies
one of them (shifted a pixel for sway) and pastes a mouth patch, and eyelid patches while it
blinks; each patch is drawn once per quantised state and cached. A mouth patch warps the photo
(the jaw drops, the lips narrow for O and widen for E) and draws the opening into it: a dark
inside edged with the photo's own lip colour, teeth for the open vowels.

Where the features are comes from `avatar_look` (`portraitMouth`, `portraitEyes`) as fractions
of the uploaded image; without `portraitEyes` the portrait does not blink.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from calls.pipeline.avatar.cache import LOOKS, BoundedCache
from calls.pipeline.avatar.face import Patch, paste, plane_views
from calls.pipeline.avatar.look import (
    MAX_PORTRAIT_SIDE_PX,
    MIN_PORTRAIT_SIDE_PX,
    PORTRAIT_FORMATS,
    FaceLook,
    FaceState,
    PortraitFeature,
    Viseme,
)
from calls.pipeline.avatar.raster import (
    BLACK,
    Canvas,
    Colour,
    coverage,
    distance,
    intersect,
    luminance,
    mix,
    rgb_to_yuv420,
    shade,
)

# Breathing: the picture grows by this fraction at a full breath in, about its bottom centre
# (the shoulders stay, the head rises a pixel or two); one scaled copy per zoom level.
BREATH_ZOOM = 0.012
ZOOM_LEVELS = 6
# Sway: the picture moves sideways by whole pixels, at most this many; the scaled copies are
# this much wider on each side (even, so the 2x2 chroma blocks stay aligned).
MAX_SWAY_PX = 1
MARGIN_PX = 2
# Framing: a face whose mouth is narrower than this fraction of the frame is zoomed into, but an
# image pixel is never enlarged to more than this many frame pixels.
MIN_MOUTH_FRACTION = 0.11
MAX_UPSCALE = 2.0
# Where the face's centre (about the nose) sits, as a fraction of the frame's height.
FACE_CENTRE_HEIGHT = 0.45
# Quantisation: each distinct value is drawn once per zoom level and cached.
MOUTH_OPEN_STEPS = 12
BLINK_STEPS = 8
# ~8 kB a mouth patch at 320x240: at most ~12 MB, and a talking face reaches a few hundred.
PATCH_CACHE_ENTRIES = 1500
TEETH: Colour = (0.93, 0.91, 0.86)


class PortraitUnavailable(Exception):
    """The portrait cannot be shown (missing, unreadable, or not an acceptable image)."""


@dataclass(frozen=True)
class _MouthMove:
    """How a viseme moves a photographed mouth, in fractions of the mouth's width."""

    half_width: float  # of the opening
    drop: float  # lower lip and jaw, down, at full openness
    lift: float  # upper lip, up, at full openness
    rest_gap: float  # parted at once (F/V, E)
    roundness: float  # exponent of the opening's profile: below 1 rounder, above 1 flatter
    squeeze: float  # above 0 the lips draw together (O, U), below 0 they stretch (E, I)
    teeth_up: float  # upper teeth showing
    teeth_down: float  # lower teeth showing


_MOUTH_MOVES = {
    Viseme.CLOSED: _MouthMove(0.40, 0.14, 0.03, 0.00, 0.80, 0.00, 0.04, 0.00),
    Viseme.OPEN: _MouthMove(0.38, 0.26, 0.05, 0.02, 0.75, 0.03, 0.06, 0.00),
    Viseme.WIDE: _MouthMove(0.43, 0.12, 0.05, 0.03, 1.00, -0.08, 0.07, 0.04),
    Viseme.ROUND: _MouthMove(0.21, 0.18, 0.06, 0.03, 0.55, 0.20, 0.00, 0.00),
    Viseme.TEETH_ON_LIP: _MouthMove(0.36, 0.03, 0.03, 0.05, 1.00, 0.00, 1.00, 0.00),
}


# --- the renderer ----------------------------------------------------------------------------


class PortraitRenderer:
    """Draws a `FaceState` on the look's portrait as a yuv420p `av.VideoFrame`.

    Raises `PortraitUnavailable` if the portrait cannot be read.
    """

    def __init__(self, look: FaceLook, width: int = 320, height: int = 240) -> None:
        if not look.portrait:
            raise PortraitUnavailable("the look has no portrait")
        self.look = look
        self.width, self.height = width, height
        self.layers = portrait_layers(look, width, height)

    def render(self, state: FaceState) -> av.VideoFrame:
        """One frame for this state."""
        return av.VideoFrame.from_ndarray(self.render_planes(state), format="yuv420p")

    def frame_key(self, state: FaceState) -> tuple[Any, ...]:
        """What a frame is drawn from, quantised: equal keys give identical frames."""
        breath = min(max(state.breath, -1.0), 1.0)
        return (
            round((breath + 1.0) / 2.0 * (ZOOM_LEVELS - 1)),
            round(min(max(state.head_dx, -MAX_SWAY_PX), MAX_SWAY_PX)),
            round(min(max(state.mouth_open, 0.0), 1.0) * MOUTH_OPEN_STEPS) / MOUTH_OPEN_STEPS,
            Viseme(state.mouth_shape),
            round(min(max(state.blink, 0.0), 1.0) * BLINK_STEPS) / BLINK_STEPS,
        )

    def render_planes(self, state: FaceState) -> np.ndarray:
        """The frame as one (height * 3 / 2, width) uint8 array: Y, then U, then V."""
        layers = self.layers
        level, sway, openness, shape, blink = self.frame_key(state)
        start = MARGIN_PX + sway  # the frame's left edge on the wider scaled copy
        pose = layers.pose(level)
        buffer = np.empty((self.height * 3 // 2, self.width), dtype=np.uint8)
        y_plane, u_plane, v_plane = planes = plane_views(buffer, self.width, self.height)
        y_plane[:] = pose.luma[:, start : start + self.width]
        parity = start % 2
        chroma_start = (start - parity) // 2
        u, v = pose.chroma[parity]
        u_plane[:] = u[:, chroma_start : chroma_start + self.width // 2]
        v_plane[:] = v[:, chroma_start : chroma_start + self.width // 2]
        if openness > 0:
            paste(planes, layers.mouth_patch(shape, openness, level, start), -start)
        if blink > 0:
            for index in range(len(pose.eyes)):
                paste(planes, layers.eye_patch(index, blink, level, start), -start)
        return buffer

    def prepare_speech(self) -> int:
        """Draw now every mouth patch speech uses (each viseme at each openness, at each zoom
        level, for either parity of the sway): see `FaceRenderer.prepare_speech`. Returns how
        many."""
        count = 0
        for level in range(ZOOM_LEVELS):
            for shape in Viseme:
                for step in range(1, MOUTH_OPEN_STEPS + 1):
                    for start in (MARGIN_PX, MARGIN_PX + 1):
                        self.layers.mouth_patch(shape, step / MOUTH_OPEN_STEPS, level, start)
                        count += 1
        return count

    def feature_box(self, name: str) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in frame pixels, at rest, of what a feature may change: mouth,
        eye_left, eye_right."""
        pose = self.layers.pose(self.layers.rest_level)
        rect = pose.mouth_rect if name == "mouth" else pose.eye_rects[("eye_left", "eye_right").index(name)]
        x0, y0, width, height = rect
        return x0 - MARGIN_PX, y0, x0 - MARGIN_PX + width + 1, y0 + height


# --- the shared layers -----------------------------------------------------------------------


def portrait_layers(look: FaceLook, width: int, height: int) -> PortraitLayers:
    """The shared layers of a portrait look at a frame size: prepared on first use, then reused."""
    key = _layers_key(look, width, height)
    return LOOKS.get(key, lambda: PortraitLayers(look, width, height))


def portrait_layers_cached(look: FaceLook, width: int, height: int) -> bool:
    """Whether `portrait_layers` would answer at once."""
    try:
        return _layers_key(look, width, height) in LOOKS
    except PortraitUnavailable:
        return False


def _layers_key(look: FaceLook, width: int, height: int) -> tuple[object, ...]:
    """The cache key: a re-uploaded or replaced file (new mtime or size) is prepared afresh."""
    assert look.portrait
    try:
        stat = os.stat(look.portrait)
    except OSError as error:
        raise PortraitUnavailable(f"cannot read {look.portrait}: {error.strerror}") from error
    return ("portrait", look, stat.st_mtime_ns, stat.st_size, width, height)


@dataclass(frozen=True)
class _Pose:
    """The portrait at one breathing zoom level, on a canvas MARGIN_PX wider on each side."""

    luma: np.ndarray  # (height, width + 2 * MARGIN_PX)
    chroma: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # by column parity
    mouth: tuple[float, float, float]  # centre x, y and width, canvas pixels
    eyes: tuple[tuple[float, float, float], ...]
    mouth_rect: tuple[int, int, int, int]  # x0, y0, width, height; even; one spare column
    eye_rects: tuple[tuple[int, int, int, int], ...]
    mouth_rgb: np.ndarray  # the canvas under mouth_rect, float32 RGB
    eye_rgb: tuple[np.ndarray, ...]


class PortraitLayers:
    """A portrait framed for one frame size: the decoded picture around the face, its scaled
    copies (one per zoom level) and the feature patches, all filled on demand and shared."""

    def __init__(self, look: FaceLook, width: int, height: int) -> None:
        if width % 2 or height % 2 or width < 64 or height < 64:
            raise ValueError("width and height must be even and at least 64")
        assert look.portrait
        self.look = look
        self.width, self.height = width, height
        self.canvas_width = width + 2 * MARGIN_PX
        self._image, self._window, features = _frame_portrait(look, self.canvas_width, height)
        self._mouth_feature, self._eye_features = features
        self.rest_level = (ZOOM_LEVELS - 1) // 2
        self._poses = BoundedCache(ZOOM_LEVELS)
        self._patches = BoundedCache(PATCH_CACHE_ENTRIES)
        rest = self.pose(self.rest_level)
        self._colours = _sample_colours(rest)

    def pose(self, level: int) -> _Pose:
        return self._poses.get(level, lambda: self._scale(level))

    def mouth_patch(self, shape: Viseme, openness: float, level: int, start: int) -> Patch:
        """The mouth in a state, at a zoom level, for a frame starting at canvas column `start`."""
        pose = self.pose(level)
        odd = (pose.mouth_rect[0] - start) % 2
        key = ("mouth", shape, openness, level, odd)
        return self._patches.get(key, lambda: self._draw_mouth(pose, shape, openness, odd))

    def eye_patch(self, index: int, blink: float, level: int, start: int) -> Patch:
        pose = self.pose(level)
        odd = (pose.eye_rects[index][0] - start) % 2
        key = ("eye", index, blink, level, odd)
        return self._patches.get(key, lambda: self._draw_eyelid(pose, index, blink, odd))

    @property
    def nbytes(self) -> int:
        """Memory held now: the decoded picture, the scaled copies, the patches (for the benchmark)."""
        total = self._image.width * self._image.height * len(self._image.getbands())
        for pose in self._poses.values():
            arrays = [pose.luma, *pose.chroma[0], *pose.chroma[1], pose.mouth_rgb, *pose.eye_rgb]
            total += sum(array.nbytes for array in arrays)
        total += sum(sum(part.nbytes for part in patch[2:]) for patch in self._patches.values())
        return total

    # -- scaling ------------------------------------------------------------------------------

    def _scale(self, level: int) -> _Pose:
        """The portrait at a zoom level: the window shrinks towards its bottom centre."""
        left, top, right, bottom = self._window
        zoom = 1.0 + BREATH_ZOOM * level / (ZOOM_LEVELS - 1)
        anchor_x, anchor_y = (left + right) / 2, bottom
        box = (
            anchor_x - (anchor_x - left) / zoom,
            anchor_y - (anchor_y - top) / zoom,
            anchor_x + (right - anchor_x) / zoom,
            bottom,
        )
        scaled = self._image.resize((self.canvas_width, self.height), Image.Resampling.LANCZOS, box=box)
        rgb = np.asarray(scaled, dtype=np.float32) / 255.0
        luma, u_even, v_even = rgb_to_yuv420(rgb)
        _, u_odd, v_odd = rgb_to_yuv420(rgb[:, 1:-1])
        pixels_per_unit = self.canvas_width / (box[2] - box[0])

        def place(feature: PortraitFeature) -> tuple[float, float, float]:
            return (
                (feature.x - box[0]) * pixels_per_unit,
                (feature.y - box[1]) * pixels_per_unit,
                feature.width * pixels_per_unit,
            )

        mouth = place(self._mouth_feature)
        mouth_rect = self._rect(mouth[0] - 0.95 * mouth[2], mouth[1] - 0.4 * mouth[2], 1.9, 1.7, mouth[2])
        eyes, eye_rects = [], []
        for feature in self._eye_features:
            eye = place(feature)
            rect = self._rect(eye[0] - 0.75 * eye[2], eye[1] - 0.6 * eye[2], 1.5, 1.05, eye[2])
            if rect[2] >= 4 and rect[3] >= 4:
                eyes.append(eye)
                eye_rects.append(rect)
        return _Pose(
            luma=luma,
            chroma=((u_even, v_even), (u_odd, v_odd)),
            mouth=mouth,
            eyes=tuple(eyes),
            mouth_rect=mouth_rect,
            eye_rects=tuple(eye_rects),
            mouth_rgb=_crop(rgb, mouth_rect),
            eye_rgb=tuple(_crop(rgb, rect) for rect in eye_rects),
        )

    def _rect(
        self, x: float, y: float, width: float, height: float, unit: float
    ) -> tuple[int, int, int, int]:
        """An even-aligned rectangle (x0, y0, width, height) on the canvas, kept where every sway
        still shows all of it (with its spare column for odd starts)."""
        x0 = max(2 * MARGIN_PX, math.floor(x / 2) * 2)
        y0 = max(0, math.floor(y / 2) * 2)
        x1 = min(self.width, math.ceil((x + width * unit) / 2) * 2)
        y1 = min(self.height, math.ceil((y + height * unit) / 2) * 2)
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)

    # -- the features -------------------------------------------------------------------------

    def _draw_mouth(self, pose: _Pose, shape: Viseme, openness: float, odd: int) -> Patch:
        x0, y0, width, height = pose.mouth_rect
        source = pose.mouth_rgb
        centre_x, centre_y, mouth_width = pose.mouth
        move = _MOUTH_MOVES[shape]
        x, y = _grid(x0 + odd, y0, width, height)
        gap = move.rest_gap * mouth_width * min(openness * 4.0, 1.0)
        up = gap * 0.4 + move.lift * mouth_width * openness
        down = gap * 0.6 + move.drop * mouth_width * openness
        half = move.half_width * mouth_width
        # Where each pixel is fetched from: the lips draw together or stretch, the upper lip
        # rises a little, and the lower lip and the chin drop with the jaw.
        across = (x - centre_x) / mouth_width
        below = (y - centre_y) / mouth_width
        lips = np.exp(-((across / 0.55) ** 4)) * np.exp(-((below / np.where(below < 0, 0.22, 0.3)) ** 4))
        source_x = centre_x + (x - centre_x) * (1.0 + move.squeeze * openness * lips)
        jaw_width = 1.0 - _smoothstep((np.abs(across) - 0.45) / 0.45)
        # The jaw's upper edge is the lips' parting inside the opening, a soft slope beyond it.
        ramp = 0.5 + 0.3 * mouth_width * np.clip((np.abs(x - centre_x) - half) / (0.3 * mouth_width), 0, 1)
        jaw_height = _smoothstep((y - centre_y + ramp) / (2 * ramp)) * (
            1.0 - _smoothstep((below - 0.7) / 0.55)
        )
        lip_width = 1.0 - _smoothstep((np.abs(across) - 0.3) / 0.4)
        lip_height = _smoothstep((below + 0.38) / 0.36) * (1.0 - _smoothstep(below / 0.15))
        source_y = y - down * jaw_width * jaw_height + up * lip_width * lip_height
        rgb = _sample(source, source_x - x0 - 0.5, source_y - y0 - 0.5)
        if up + down >= 0.6:
            canvas = Canvas(x, y, rgb)
            self._draw_opening(canvas, pose, move, openness=openness, half=half, up=up, down=down)
            rgb = canvas.rgb
        luma, u, v = rgb_to_yuv420(np.clip(rgb, 0.0, 1.0))
        return x0 + odd, y0, luma, u, v

    def _draw_opening(
        self,
        canvas: Canvas,
        pose: _Pose,
        move: _MouthMove,
        *,
        openness: float,
        half: float,
        up: float,
        down: float,
    ) -> None:
        x, y = canvas.x, canvas.y
        centre_x, centre_y, mouth_width = pose.mouth
        colours = self._colours
        soft = max(1.0, mouth_width / 45.0)
        profile = np.clip(1.0 - ((x - centre_x) / half) ** 2, 0.0, 1.0)
        upper = centre_y - up * profile ** (0.8 * move.roundness)
        lower = centre_y + down * profile**move.roundness
        sides = distance(np.abs(x - centre_x) - half)
        opening = intersect(distance(upper - y), distance(y - lower), sides)
        # The lips' wet inner edge, a little darker than the lips, then the dark inside.
        canvas.paint(coverage(opening - 0.9 * soft, soft), colours["lips_inner"], 0.85)
        canvas.paint(coverage(opening, soft), colours["inside"])
        if down > 0.12 * mouth_width:
            tongue = intersect(
                canvas.ellipse(centre_x, lower.max() + 0.2 * down, half * 0.7, 0.45 * down), opening
            )
            canvas.paint(coverage(tongue, 2.0 * soft), colours["tongue"], 0.6)
        corners = np.clip(np.abs(x - centre_x) / half, 0.0, 1.0) ** 2
        if move.teeth_up:
            depth = min(move.teeth_up * mouth_width, (up + down) * 0.6)
            teeth = intersect(
                opening, distance(y - upper - depth), distance(np.abs(x - centre_x) - half * 0.8)
            )
            canvas.paint(coverage(teeth, soft) * (1.0 - 0.55 * corners), colours["teeth"])
        if move.teeth_down:
            depth = min(
                move.teeth_down * mouth_width, max(up + down - move.teeth_up * mouth_width - 1.0, 0.0)
            )
            teeth = intersect(
                opening, distance(lower - depth - y), distance(np.abs(x - centre_x) - half * 0.7)
            )
            canvas.paint(coverage(teeth, soft) * (1.0 - 0.6 * corners), colours["teeth"], 0.9)
        # The upper lip's shadow inside the mouth.
        shadow = intersect(opening, distance(y - upper - 0.6 * soft))
        canvas.paint(coverage(shadow, 1.5 * soft), BLACK, 0.25)

    def _draw_eyelid(self, pose: _Pose, index: int, blink: float, odd: int) -> Patch:
        x0, y0, width, height = pose.eye_rects[index]
        centre_x, centre_y, eye_width = pose.eyes[index]
        colours = self._colours
        x, y = _grid(x0 + odd, y0, width, height)
        rgb = pose.eye_rgb[index][:, odd : odd + width].astype(np.float64)
        canvas = Canvas(x, y, rgb)
        radius_x = eye_width / 2
        across = np.clip(1.0 - ((x - centre_x) / radius_x) ** 2, 0.0, 1.0) ** 0.5
        upper = centre_y - 0.36 * eye_width * across
        lower = centre_y + 0.24 * eye_width * across
        lid = upper + (lower - upper) * blink
        soft = max(1.0, eye_width / 12.0)
        # A little larger than the eye itself, so the photo's lashes and iris edge are covered.
        eye = intersect(
            distance(upper - 0.06 * eye_width - y),
            distance(y - lower),
            distance(np.abs(x - centre_x) - radius_x * 1.08),
        )
        covered = intersect(eye, distance(y - lid))
        canvas.paint(coverage(covered, soft), colours[f"lid_{index}"])
        crease = intersect(covered, distance(lid - 0.12 * eye_width - y))
        canvas.paint(coverage(crease, 2.0 * soft), colours[f"lid_shadow_{index}"], 0.7)
        lash = intersect(
            distance(np.abs(y - lid) - max(0.5, 0.05 * eye_width)), distance(np.abs(x - centre_x) - radius_x)
        )
        canvas.paint(coverage(lash, soft), colours[f"lash_{index}"], 0.85 * min(1.0, blink * 2.0))
        luma, u, v = rgb_to_yuv420(np.clip(canvas.rgb, 0.0, 1.0))
        return x0 + odd, y0, luma, u, v


# --- decoding and framing --------------------------------------------------------------------


def _frame_portrait(
    look: FaceLook, canvas_width: int, height: int
) -> tuple[
    Image.Image, tuple[float, float, float, float], tuple[PortraitFeature, tuple[PortraitFeature, ...]]
]:
    """Decode the portrait and choose the part of it the frame shows, face centred.

    Returns the decoded picture (cropped to that part, with the features in its pixels), the
    window in its pixels, and the mouth and eyes in its pixels (x, y, width).
    """
    assert look.portrait
    mouth = look.portrait_mouth
    try:
        with Image.open(look.portrait) as opened:
            if opened.format not in PORTRAIT_FORMATS:
                raise PortraitUnavailable(f"{opened.format} images are not accepted")
            transposed = opened.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            full_width, full_height = opened.size[::-1] if transposed else opened.size
            if max(full_width, full_height) > MAX_PORTRAIT_SIDE_PX:
                raise PortraitUnavailable(f"larger than {MAX_PORTRAIT_SIDE_PX} pixels on a side")
            if min(full_width, full_height) < MIN_PORTRAIT_SIDE_PX:
                raise PortraitUnavailable(f"smaller than {MIN_PORTRAIT_SIDE_PX} pixels on a side")
            # Image pixels per frame pixel: cover the frame, zoom in on a small face, and never
            # enlarge past MAX_UPSCALE.
            cover = min(full_width / canvas_width, full_height / height)
            face = mouth.width * full_width / (MIN_MOUTH_FRACTION * canvas_width)
            per_pixel = min(cover, max(face, 1.0 / MAX_UPSCALE))
            # A JPEG decodes much faster at 1/2, 1/4 or 1/8 of its size: keep 1.5 image pixels
            # per frame pixel.
            wanted = 1.5 / per_pixel
            if wanted < 1.0:
                opened.draft("RGB", (math.ceil(opened.size[0] * wanted), math.ceil(opened.size[1] * wanted)))
            image = _flatten(ImageOps.exif_transpose(opened), look.rgb("background"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        raise PortraitUnavailable(f"cannot decode {look.portrait}: {error}") from error
    image_width, image_height = image.size
    per_pixel *= image_width / full_width  # what decoding at a reduced size did
    mouth_x, mouth_y, mouth_width = mouth.x * image_width, mouth.y * image_height, mouth.width * image_width
    eyes = look.portrait_eyes or ()
    if eyes:
        eyes_y = sum(eye.y for eye in eyes) / 2 * image_height
        centre_x = (sum(eye.x for eye in eyes) / 2 * image_width + mouth_x) / 2
        centre_y = eyes_y + 0.5 * (mouth_y - eyes_y)
    else:
        centre_x, centre_y = mouth_x, mouth_y - 0.6 * mouth_width
    window_width = min(canvas_width * per_pixel, image_width)
    window_height = min(height * per_pixel, image_height)
    left = max(min(centre_x - window_width / 2, image_width - window_width), 0.0)
    top = max(min(centre_y - FACE_CENTRE_HEIGHT * window_height, image_height - window_height), 0.0)
    # Keep only the window (and two pixels round it for the resampling filter).
    crop = (max(0, math.floor(left) - 2), max(0, math.floor(top) - 2))
    image = image.crop(
        (
            *crop,
            min(image_width, math.ceil(left + window_width) + 2),
            min(image_height, math.ceil(top + window_height) + 2),
        )
    )

    def moved(feature: PortraitFeature) -> PortraitFeature:
        return PortraitFeature(
            x=feature.x * image_width - crop[0],
            y=feature.y * image_height - crop[1],
            width=feature.width * image_width,
        )

    window = (left - crop[0], top - crop[1], left - crop[0] + window_width, top - crop[1] + window_height)
    return image, window, (moved(mouth), tuple(moved(eye) for eye in eyes))


def _flatten(image: Image.Image, background: Colour) -> Image.Image:
    """RGB; a transparent portrait is laid on the look's background colour."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        fill = tuple(round(channel * 255) for channel in background)
        base = Image.new("RGBA", rgba.size, (*fill, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def _sample_colours(pose: _Pose) -> dict[str, Colour]:
    """The photo's own lip, lid and lash colours, for the parts the patches draw."""
    centre_x, centre_y, mouth_width = pose.mouth
    x0, y0 = pose.mouth_rect[:2]
    lips = _median(pose.mouth_rgb, x0, y0, (centre_x, centre_y), 0.3 * mouth_width, 0.06 * mouth_width)
    skin = _median(
        pose.mouth_rgb,
        x0,
        y0,
        (centre_x, centre_y - 0.3 * mouth_width),
        0.5 * mouth_width,
        0.05 * mouth_width,
    )
    light = min(max(0.45 + 0.75 * luminance(skin), 0.55), 1.0)
    colours = {
        "lips_inner": shade(lips, 0.45),
        "inside": mix(shade(lips, 1.0), BLACK, 0.62),
        "tongue": mix(shade(lips, 0.5), (0.75, 0.38, 0.4), 0.3),
        "teeth": (TEETH[0] * light, TEETH[1] * light, TEETH[2] * light),
    }
    for index, (eye, rect, rgb) in enumerate(zip(pose.eyes, pose.eye_rects, pose.eye_rgb, strict=True)):
        centre_x, centre_y, eye_width = eye
        lid = _median(
            rgb, rect[0], rect[1], (centre_x, centre_y - 0.47 * eye_width), 0.3 * eye_width, 0.08 * eye_width
        )
        colours[f"lid_{index}"] = lid
        colours[f"lid_shadow_{index}"] = shade(lid, 0.35)
        region = _region(rgb, rect[0], rect[1], (centre_x, centre_y), 0.45 * eye_width, 0.2 * eye_width)
        darkest = region[np.argsort(region @ np.array([0.299, 0.587, 0.114]))[: max(1, len(region) // 12)]]
        red, green, blue = (float(channel) for channel in darkest.mean(axis=0))
        colours[f"lash_{index}"] = mix((red, green, blue), BLACK, 0.35)
    return colours


# --- small helpers ---------------------------------------------------------------------------


def _grid(x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates of the centres of a rectangle of pixels."""
    return np.meshgrid(np.arange(x0, x0 + width) + 0.5, np.arange(y0, y0 + height) + 0.5)


def _crop(rgb: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """The canvas under a rectangle, with the spare column an odd start needs."""
    x0, y0, width, height = rect
    return rgb[y0 : y0 + height, x0 : x0 + width + 1].copy()


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, 3) image at fractional pixel indices (clamped to its edge)."""
    height, width = image.shape[:2]
    x = np.clip(x, 0.0, width - 1.0)
    y = np.clip(y, 0.0, height - 1.0)
    left = np.minimum(x.astype(np.intp), width - 2) if width > 1 else np.zeros(x.shape, np.intp)
    top = np.minimum(y.astype(np.intp), height - 2) if height > 1 else np.zeros(y.shape, np.intp)
    fx = (x - left)[..., None]
    fy = (y - top)[..., None]
    right = np.minimum(left + 1, width - 1)
    bottom = np.minimum(top + 1, height - 1)
    upper = image[top, left] * (1.0 - fx) + image[top, right] * fx
    lower = image[bottom, left] * (1.0 - fx) + image[bottom, right] * fx
    return upper * (1.0 - fy) + lower * fy


def _region(
    rgb: np.ndarray, x0: int, y0: int, centre: tuple[float, float], half_width: float, half_height: float
) -> np.ndarray:
    """The pixels (N, 3) of a crop within a box round a canvas point; at least one."""
    height, width = rgb.shape[:2]
    left = min(max(round(centre[0] - half_width - x0), 0), width - 1)
    right = min(max(round(centre[0] + half_width - x0), left + 1), width)
    top = min(max(round(centre[1] - half_height - y0), 0), height - 1)
    bottom = min(max(round(centre[1] + half_height - y0), top + 1), height)
    return rgb[top:bottom, left:right].reshape(-1, 3).astype(np.float64)


def _median(
    rgb: np.ndarray, x0: int, y0: int, centre: tuple[float, float], half_width: float, half_height: float
) -> Colour:
    red, green, blue = np.median(_region(rgb, x0, y0, centre, half_width, half_height), axis=0)
    return float(red), float(green), float(blue)
