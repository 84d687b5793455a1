"""Checks on what a persona's face is made of: its avatar look and an uploaded portrait."""

from __future__ import annotations

from typing import IO, Any

from django.core.exceptions import ValidationError
from PIL import Image, UnidentifiedImageError

from calls.pipeline.avatar.look import (
    MAX_PORTRAIT_SIDE_PX,
    MIN_PORTRAIT_SIDE_PX,
    PORTRAIT_FORMATS,
    look_problems,
)

# An upload: a sharp 320x240 face needs far less, and every session start may decode it.
MAX_PORTRAIT_BYTES = 5 * 1024 * 1024
_FORMAT_NAMES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}


def validate_avatar_look(value: Any) -> None:
    """Refuse an `avatar_look` the face would not understand, naming each bad key."""
    problems = look_problems(value)
    if problems:
        raise ValidationError([f"{key}: {message}" if key else message for key, message in problems.items()])


def validate_avatar_portrait(upload: IO[bytes]) -> None:
    """Refuse an uploaded portrait that is not a JPEG, PNG or WebP image of a usable size."""
    accepted = ", ".join(_FORMAT_NAMES[name] for name in PORTRAIT_FORMATS)
    size = getattr(upload, "size", None)
    if size is not None and size > MAX_PORTRAIT_BYTES:
        raise ValidationError(
            f"The portrait is {size / 1024 / 1024:.1f} MB; it may be at most "
            f"{MAX_PORTRAIT_BYTES // 1024 // 1024} MB."
        )
    try:
        upload.seek(0)
        with Image.open(upload) as image:
            image_format, (width, height) = image.format, image.size
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValidationError(f"The portrait is not an image that can be read ({accepted}).") from error
    finally:
        upload.seek(0)
    if image_format not in PORTRAIT_FORMATS:
        raise ValidationError(f"The portrait is a {image_format} image; it must be {accepted}.")
    if min(width, height) < MIN_PORTRAIT_SIDE_PX:
        raise ValidationError(
            f"The portrait is {width}x{height} pixels; it must be at least "
            f"{MIN_PORTRAIT_SIDE_PX}x{MIN_PORTRAIT_SIDE_PX}."
        )
    if max(width, height) > MAX_PORTRAIT_SIDE_PX:
        raise ValidationError(
            f"The portrait is {width}x{height} pixels; it may be at most {MAX_PORTRAIT_SIDE_PX} on a side."
        )
