"""What a persona looks like (`FaceLook`), what its face does in one frame (`FaceState`).

Plain Python, no numpy: the personas app validates `Persona.avatar_look` with `look_problems`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_HEX_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")

HAIR_STYLES = ("bob", "long", "short", "bun")
COLOUR_KEYS = ("skin", "hair", "eyes", "lips", "background", "clothes")
# Where a portrait's features are, as fractions of the uploaded image: x and width of its
# width, y of its height. A feature is a point with a width (the mouth's corners, an eye's).
PORTRAIT_MOUTH_KEY = "portraitMouth"
PORTRAIT_EYES_KEY = "portraitEyes"
PORTRAIT_MOUTH_WIDTH_RANGE = (0.02, 0.5)
PORTRAIT_EYE_WIDTH_RANGE = (0.01, 0.25)
LOOK_KEYS = (*COLOUR_KEYS, "hairStyle", PORTRAIT_MOUTH_KEY, PORTRAIT_EYES_KEY)
# What a portrait may be: the formats decoded (Pillow's names), and its size in pixels (a small
# PNG can still unpack to gigabytes).
PORTRAIT_FORMATS = ("JPEG", "PNG", "WEBP")
MIN_PORTRAIT_SIDE_PX = 128
MAX_PORTRAIT_SIDE_PX = 8000

Colour = tuple[float, float, float]


class Viseme(StrEnum):
    """The mouth shapes the face can make; speech is mapped onto these."""

    CLOSED = "MBP"  # rest, and lips pressed for M, B, P
    OPEN = "A"
    WIDE = "EI"
    ROUND = "OU"
    TEETH_ON_LIP = "FV"


@dataclass(frozen=True)
class PortraitFeature:
    """A feature of a portrait: its centre and width as fractions of the image."""

    x: float
    y: float
    width: float


# A centred head-and-shoulders portrait: the mouth a little below the middle.
DEFAULT_PORTRAIT_MOUTH = PortraitFeature(x=0.5, y=0.6, width=0.13)


@dataclass(frozen=True)
class FaceLook:
    """How a persona looks: colours as '#rrggbb', a hair style, or a portrait to animate.

    `portrait` is a file path (the persona's uploaded `avatar_portrait`); it never comes from
    `avatar_look`, which only says where the portrait's mouth and eyes are.
    """

    skin: str = "#e8b99a"
    hair: str = "#3b2a20"
    eyes: str = "#2f4a6b"
    lips: str = "#b5545c"
    background: str = "#dfe8f1"
    clothes: str = "#4d6a8a"
    hair_style: str = "bob"
    portrait: str | None = None
    portrait_mouth: PortraitFeature = DEFAULT_PORTRAIT_MOUTH
    portrait_eyes: tuple[PortraitFeature, PortraitFeature] | None = None  # None: no blinking

    @classmethod
    def from_dict(cls, look: Mapping[str, Any] | None, *, portrait: str | None = None) -> FaceLook:
        """Build from `Persona.avatar_look`; missing or invalid values fall back to the defaults."""
        look = look if isinstance(look, Mapping) else {}
        defaults = cls()
        colours = {}
        for name in COLOUR_KEYS:
            value = look.get(name)
            colours[name] = _normalise_hex(value) if _is_hex(value) else getattr(defaults, name)
        style = look.get("hairStyle", look.get("hair_style"))
        style = style.lower() if isinstance(style, str) else ""
        mouth = _feature(look.get(PORTRAIT_MOUTH_KEY), PORTRAIT_MOUTH_WIDTH_RANGE)
        eyes = _eyes(look.get(PORTRAIT_EYES_KEY))
        return cls(
            **colours,
            hair_style=style if style in HAIR_STYLES else defaults.hair_style,
            portrait=portrait or None,
            portrait_mouth=mouth or DEFAULT_PORTRAIT_MOUTH,
            portrait_eyes=eyes,
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
    breath: float = 0.0  # -1 breathed out .. 1 breathed in (a portrait zooms with it)


def look_problems(look: object) -> dict[str, str]:
    """What is wrong with an `avatar_look` value, by key ('' for the value as a whole)."""
    if not isinstance(look, Mapping):
        return {"": 'must be an object, e.g. {"skin": "#e8b99a", "hairStyle": "bob"}'}
    problems: dict[str, str] = {}
    for key, value in look.items():
        if key in COLOUR_KEYS:
            if not _is_hex(value):
                problems[key] = "must be a colour written #rrggbb or #rgb"
        elif key == "hairStyle":
            if not (isinstance(value, str) and value.lower() in HAIR_STYLES):
                problems[key] = f"must be one of {', '.join(HAIR_STYLES)}"
        elif key == PORTRAIT_MOUTH_KEY:
            if _feature(value, PORTRAIT_MOUTH_WIDTH_RANGE) is None:
                problems[key] = _feature_rule(PORTRAIT_MOUTH_WIDTH_RANGE)
        elif key == PORTRAIT_EYES_KEY:
            if _eyes(value) is None:
                problems[key] = "must be a list of two eyes, each " + _feature_rule(PORTRAIT_EYE_WIDTH_RANGE)
        else:
            problems[str(key)] = f"unknown key; allowed keys are: {', '.join(LOOK_KEYS)}"
    return problems


def _feature_rule(width_range: tuple[float, float]) -> str:
    low, high = width_range
    return (
        f'must be {{"x": 0..1, "y": 0..1, "width": {low}..{high}}}: fractions of the '
        "uploaded image's width (x, width) and height (y)"
    )


def _feature(value: object, width_range: tuple[float, float]) -> PortraitFeature | None:
    if not isinstance(value, Mapping) or set(value) != {"x", "y", "width"}:
        return None
    numbers = [value[name] for name in ("x", "y", "width")]
    if not all(isinstance(number, int | float) and not isinstance(number, bool) for number in numbers):
        return None
    x, y, width = (float(number) for number in numbers)
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 and width_range[0] <= width <= width_range[1]):
        return None
    return PortraitFeature(x=x, y=y, width=width)


def _eyes(value: object) -> tuple[PortraitFeature, PortraitFeature] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    eyes = [_feature(eye, PORTRAIT_EYE_WIDTH_RANGE) for eye in value]
    if eyes[0] is None or eyes[1] is None:
        return None
    left, right = sorted(eyes, key=lambda eye: eye.x)
    return left, right


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
