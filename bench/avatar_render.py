"""Avatar drawing cost: mean and p95 ms per 320x240 frame, idle and talking; optional screenshots.

python bench/avatar_render.py                # timings
python bench/avatar_render.py --screenshots  # also var/screenshots/avatar-*.png and a sheet
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calls.pipeline.avatar.animator import FaceAnimator, phoneme_events  # noqa: E402
from calls.pipeline.avatar.face import FaceRenderer, FaceState, Viseme  # noqa: E402

FPS = 20
SECONDS = 30.0  # of simulated frames per sequence
SCREENSHOT_DIR = ROOT / "var" / "screenshots"
LOOKS = {
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


def run(renderer: FaceRenderer, talking: bool) -> list[float]:
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
        f"{name:<28} mean {statistics.fmean(timings):6.3f} ms   p95 {p95:6.3f} ms   max {ordered[-1]:6.2f} ms"
    )


def screenshots() -> None:
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
    rows = []
    for look_name, look in LOOKS.items():
        renderer = FaceRenderer(look)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--screenshots", action="store_true")
    arguments = parser.parse_args()
    started = time.perf_counter()
    renderer = FaceRenderer(LOOKS["default"])
    print(f"renderer setup {(time.perf_counter() - started) * 1000:.0f} ms")
    # The first pass draws every patch once (cold caches); later passes only paste them.
    report("idle, cold caches", run(renderer, talking=False))
    report("idle", run(renderer, talking=False))
    renderer = FaceRenderer(LOOKS["default"])
    report("talking, cold caches", run(renderer, talking=True))
    report("talking", run(renderer, talking=True))
    if arguments.screenshots:
        screenshots()


if __name__ == "__main__":
    main()
