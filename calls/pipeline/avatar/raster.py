"""Drawing primitives: BT.601 colour conversion and anti-aliased shapes on float RGB layers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Colour = tuple[float, float, float]


def mix(a: Colour, b: Colour, amount: float) -> Colour:
    return (
        a[0] + (b[0] - a[0]) * amount,
        a[1] + (b[1] - a[1]) * amount,
        a[2] + (b[2] - a[2]) * amount,
    )


def shade(colour: Colour, amount: float) -> Colour:
    """Darken towards a warm shadow rather than grey, which reads as flat-illustration shading."""
    shadow = (colour[0] * 0.62, colour[1] * 0.48, colour[2] * 0.52)
    return mix(colour, shadow, amount)


def luminance(colour: Colour) -> float:
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


def distance(implicit: np.ndarray) -> np.ndarray:
    grad_y, grad_x = np.gradient(implicit)
    return implicit / np.maximum(np.hypot(grad_x, grad_y), 1e-6)


def coverage(distance_px: np.ndarray, softness_px: float = 1.0) -> np.ndarray:
    return np.clip(0.5 - distance_px / softness_px, 0.0, 1.0)


class Canvas:
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
        return distance(np.hypot((self.x - cx) / rx, (self.y - cy) / ry) - 1.0)

    def circle(self, cx: float, cy: float, radius: float, scale: float) -> np.ndarray:
        return (np.hypot(self.x - cx, self.y - cy) - radius) * scale

    def below(self, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Signed distance (px) to the region under y = curve(x) (image y grows downwards)."""
        return distance(curve(self.x) - self.y)

    def above(self, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Signed distance (px) to the region over y = curve(x)."""
        return distance(self.y - curve(self.x))


def over(bottom: np.ndarray, layer: Canvas | tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    rgb, alpha = (layer.rgb, layer.alpha) if isinstance(layer, Canvas) else layer
    return rgb + bottom * (1.0 - alpha[..., None])


def union(*distances: np.ndarray) -> np.ndarray:
    return np.minimum.reduce(distances)


def intersect(*distances: np.ndarray) -> np.ndarray:
    return np.maximum.reduce(distances)
