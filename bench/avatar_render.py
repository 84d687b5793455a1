"""Avatar drawing cost: renderer setup (cold and shared), ms per 320x240 frame, memory per session.

python bench/avatar_render.py                          # the drawn face
python bench/avatar_render.py --portrait               # also a portrait (a generated picture)
python bench/avatar_render.py --portrait me.jpg --look '{"portraitMouth": {...}, "portraitEyes": [...]}'
python bench/avatar_render.py --screenshots            # also var/screenshots/avatar-*.png and a sheet
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calls.pipeline.avatar.animator import FaceAnimator, phoneme_events  # noqa: E402
from calls.pipeline.avatar.cache import LOOKS  # noqa: E402
from calls.pipeline.avatar.face import FaceRenderer, FaceState, Viseme  # noqa: E402
from calls.pipeline.avatar.look import FaceLook  # noqa: E402
from calls.pipeline.avatar.track import Renderer, renderer_create  # noqa: E402

FPS = 20
SECONDS = 30.0  # of simulated frames per sequence
SCREENSHOT_DIR = ROOT / "var" / "screenshots"
LOOK_PRESETS = {
    "default": {
        "skin": "#e8b99a",
        "hair": "#3b2a20",
        "eyes": "#2f4a6b",
        "lips": "#b5545c",
        "background": "#dfe8f1",
        "hairStyle": "bob",
    },
    "second": {
        "skin": "#8d5a3b",
        "hair": "#1c1410",
        "eyes": "#4a3222",
        "lips": "#7a3b3a",
        "background": "#f3e3c8",
        "clothes": "#a8553f",
        "hairStyle": "long",
    },
}
# A sentence's worth of espeak-ng phonemes, (offset s, mnemonic), repeated while talking.
SENTENCE = [
    (0.00, "h"), (0.06, "@"), (0.12, "l"), (0.18, "'oU"), (0.36, "_"), (0.42, "aI"), (0.58, "m"),
    (0.66, "p"), (0.72, "r"), (0.78, "'I"), (0.86, "t"), (0.92, "i"), (1.02, "f"), (1.10, "'a"),
    (1.26, "s"), (1.34, "t"), (1.42, "w"), (1.48, "'O"), (1.62, "dZ"), (1.70, "E"), (1.84, "v"),
    (1.92, "@"), (2.02, "b"), (2.08, "u:"), (2.24, "n"),
]  # fmt: skip
SENTENCE_SECONDS = 2.5


# Where the generated portrait's features are (it is the drawn face, photographed at 1280x960).
SYNTHETIC_PORTRAIT_LOOK = {
    "portraitMouth": {"x": 0.5, "y": 0.629, "width": 0.1},
    "portraitEyes": [{"x": 0.433, "y": 0.467, "width": 0.06}, {"x": 0.567, "y": 0.467, "width": 0.06}],
}


def run(renderer: Renderer, talking: bool) -> list[float]:
    animator = FaceAnimator(fps=FPS, seed=7)
    start = 1000.0
    if talking:
        sentences = int(SECONDS / SENTENCE_SECONDS)
        for index in range(sentences):
            animator.speech_timeline_push(
                start + index * SENTENCE_SECONDS, phoneme_events(SENTENCE, end_offset=2.32)
            )
    timings = []
    for frame in range(int(SECONDS * FPS)):
        began = time.perf_counter()
        renderer.render(animator.state_at(start + frame / FPS))
        timings.append((time.perf_counter() - began) * 1000.0)
    return timings


def report(name: str, timings: list[float]) -> None:
    ordered = sorted(timings)
    p95 = ordered[int(len(ordered) * 0.95)]
    print(
        f"{name:<32} mean {statistics.fmean(timings):6.3f} ms   p95 {p95:6.3f} ms   max {ordered[-1]:6.2f} ms"
    )


def synthetic_portrait(directory: Path) -> Path:
    """A photo-like picture to animate: the drawn face at 1280x960, with grain, light and blur."""
    import numpy as np
    from PIL import Image, ImageFilter

    look = FaceLook(skin="#d9a285", hair="#4a3323", lips="#a8505a", background="#b8c4cc", clothes="#6b4f3a")
    picture = FaceRenderer(look, 1280, 960).render(FaceState()).to_ndarray(format="rgb24").astype(float)
    picture += np.random.default_rng(1).normal(0.0, 5.0, picture.shape)
    picture *= (1.05 - 0.15 * np.arange(1280) / 1280)[None, :, None]  # light from the left
    image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.0))
    path = directory / "portrait.jpg"
    image.save(path, quality=92)
    return path


def setup_and_memory(name: str, create: Callable[[], Renderer]) -> None:
    """Setup time of three sessions' renderers (the first prepares the look), then the memory
    a session adds, with tracemalloc (which slows allocation, so it is not on while timing)."""
    LOOKS.clear()
    for session in range(3):
        began = time.perf_counter()
        create()
        setup = (time.perf_counter() - began) * 1000
        kind = "cold: prepares the look" if session == 0 else "warm: the look is shared"
        print(f"{name} session {session + 1}: renderer setup {setup:7.2f} ms  ({kind})")
    LOOKS.clear()
    renderers = []
    for session in range(3):
        gc.collect()
        tracemalloc.start()
        renderer = create()
        run(renderer, talking=True)  # 30 s of talking fills what the look's caches will hold
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        renderers.append(renderer)
        print(
            f"{name} session {session + 1}: memory added {held / 1e6:5.2f} MB (peak {peak / 1e6:5.2f} MB)"
            " after 30 s of talking"
        )
    print(f"{name}: the shared look holds {renderers[0].layers.nbytes / 1e6:.2f} MB")


def timings(name: str, create: Callable[[], Renderer]) -> None:
    LOOKS.clear()
    renderer = create()
    # The first pass draws every patch once (cold caches); later passes only paste them.
    report(f"{name}: idle, cold caches", run(renderer, talking=False))
    report(f"{name}: idle", run(renderer, talking=False))
    LOOKS.clear()
    renderer = create()
    report(f"{name}: talking, cold caches", run(renderer, talking=True))
    report(f"{name}: talking", run(renderer, talking=True))


def screenshots(portrait_look: FaceLook | None) -> None:
    from PIL import Image, ImageDraw

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    poses = {
        "idle": FaceState(brow_raise=0.12),
        "blink": FaceState(blink=0.55),
        "closed-eyes": FaceState(blink=1.0),
    }
    for shape in Viseme:
        poses[f"mouth-{shape.value}"] = FaceState(
            mouth_shape=shape, mouth_open=0.0 if shape is Viseme.CLOSED else 0.8, brow_raise=0.3
        )
    looks: dict[str, Any] = dict(LOOK_PRESETS)
    if portrait_look is not None:
        looks["portrait"] = portrait_look
    rows = []
    for look_name, look in looks.items():
        renderer = renderer_create(look if isinstance(look, FaceLook) else FaceLook.from_dict(look))
        row = []
        for pose, state in poses.items():
            image = renderer.render(state).to_image()
            image.save(SCREENSHOT_DIR / f"avatar-{look_name}-{pose}.png")
            row.append((pose, image))
        rows.append(row)
    label_height, columns = 18, 4
    tiles = [tile for row in rows for tile in row]
    sheet_rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (320 * columns, (240 + label_height) * sheet_rows), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (pose, image) in enumerate(tiles):
        left, top = (index % columns) * 320, (index // columns) * (240 + label_height)
        sheet.paste(image, (left, top + label_height))
        draw.text((left + 6, top + 3), pose, fill=(40, 40, 40))
    sheet.save(SCREENSHOT_DIR / "avatar-sheet.png")
    print(f"screenshots in {SCREENSHOT_DIR}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--screenshots", action="store_true")
    parser.add_argument(
        "--portrait", nargs="?", const="generated", help="a picture to animate (default: a generated one)"
    )
    parser.add_argument("--look", help="avatar_look JSON for --portrait (portraitMouth, portraitEyes)")
    arguments = parser.parse_args()
    face_look = FaceLook.from_dict(LOOK_PRESETS["default"])
    setup_and_memory("face", lambda: FaceRenderer(face_look))
    timings("face", lambda: FaceRenderer(face_look))
    portrait_look = None
    with tempfile.TemporaryDirectory() as directory:
        if arguments.portrait:
            if arguments.portrait == "generated":
                path = synthetic_portrait(Path(directory))
                look = json.loads(arguments.look) if arguments.look else SYNTHETIC_PORTRAIT_LOOK
            else:
                path = Path(arguments.portrait)
                look = json.loads(arguments.look) if arguments.look else {}
            portrait_look = FaceLook.from_dict(look, portrait=str(path))
            setup_and_memory("portrait", lambda: renderer_create(portrait_look))
            timings("portrait", lambda: renderer_create(portrait_look))
        if arguments.screenshots:
            screenshots(portrait_look)


if __name__ == "__main__":
    main()
