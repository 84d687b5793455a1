"""The avatar: what the face looks like, how it moves, and the video track that sends it."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from calls.pipeline.avatar.animator import FaceAnimator, phoneme_events, viseme_for_phoneme
from calls.pipeline.avatar.cache import SharedCache
from calls.pipeline.avatar.face import FaceLook, FaceRenderer, FaceState, Viseme, yuv_to_rgb
from calls.pipeline.avatar.look import PortraitFeature, look_problems
from calls.pipeline.avatar.portrait import PortraitRenderer
from calls.pipeline.avatar.track import AvatarVideoTrack, renderer_create, renderer_ready

FPS = 20
FRAME = 1.0 / FPS
LOOK = {
    "skin": "#e8b99a",
    "hair": "#3b2a20",
    "eyes": "#2f4a6b",
    "lips": "#b5545c",
    "background": "#dfe8f1",
    "hairStyle": "bob",
}


@pytest.fixture(scope="module")
def renderer() -> FaceRenderer:
    return FaceRenderer(LOOK)


def pixel_rgb(frame_planes: np.ndarray, x: int, y: int, width: int = 320, height: int = 240) -> np.ndarray:
    flat = frame_planes.reshape(-1)
    chroma = (height // 2) * (width // 2)
    luma = flat[y * width + x]
    u = flat[width * height + (y // 2) * (width // 2) + x // 2]
    v = flat[width * height + chroma + (y // 2) * (width // 2) + x // 2]
    return np.array(yuv_to_rgb(float(luma), float(u), float(v))) * 255


def hex_rgb(value: str) -> np.ndarray:
    return np.array([int(value[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)


def changed_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the luma pixels that differ, or None."""
    diff = np.argwhere(a[:240] != b[:240])
    if diff.size == 0:
        return None
    (y0, x0), (y1, x1) = diff.min(axis=0), diff.max(axis=0)
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


def inside(box: tuple[int, int, int, int], bounds: tuple[int, int, int, int]) -> bool:
    return box[0] >= bounds[0] and box[1] >= bounds[1] and box[2] <= bounds[2] and box[3] <= bounds[3]


# --- the look ---------------------------------------------------------------------------------


def test_a_frame_is_yuv420p_with_background_in_the_corner_and_skin_at_the_face_centre(renderer):
    frame = renderer.render(FaceState())
    assert (frame.format.name, frame.width, frame.height) == ("yuv420p", 320, 240)
    planes = frame.to_ndarray()
    assert np.abs(pixel_rgb(planes, 3, 3) - hex_rgb(LOOK["background"])).max() < 8
    # Between the eyes, above the nose: plain lit skin.
    assert np.abs(pixel_rgb(planes, 158, 104) - hex_rgb(LOOK["skin"])).max() < 12


def test_an_open_mouth_changes_only_the_mouth_region(renderer):
    closed = renderer.render_planes(FaceState(mouth_open=0.0))
    mouth = renderer.feature_box("mouth")
    for shape in Viseme:
        opened = renderer.render_planes(FaceState(mouth_open=0.8, mouth_shape=shape))
        box = changed_box(closed, opened)
        assert box is not None, shape
        assert inside(box, mouth), (shape, box, mouth)
        assert mouth[0] < 160 < mouth[2] and 140 < mouth[3] < 175


def test_the_mouth_shapes_are_distinct(renderer):
    frames = [renderer.render_planes(FaceState(mouth_open=0.8, mouth_shape=shape)) for shape in Viseme]
    for i, first in enumerate(frames):
        for second in frames[i + 1 :]:
            assert np.abs(first[:240].astype(int) - second[:240].astype(int)).sum() > 2000


def test_a_blink_closes_the_eyes_and_they_reopen(renderer):
    open_eyes = renderer.render_planes(FaceState(blink=0.0))
    closed = renderer.render_planes(FaceState(blink=1.0))
    box = changed_box(open_eyes, closed)
    assert box is not None
    left, right = renderer.feature_box("eye_left"), renderer.feature_box("eye_right")
    assert inside(box, (left[0], min(left[1], right[1]), right[2], max(left[3], right[3])))
    # Closed, the white and the iris are replaced by the lid.
    eye = (slice(left[1], left[3]), slice(left[0], left[2]))
    assert np.abs(open_eyes[eye].astype(int) - closed[eye].astype(int)).sum() > 3000
    reopened = renderer.render_planes(FaceState(blink=0.0))
    assert np.array_equal(open_eyes, reopened)


def test_a_head_offset_moves_the_head_and_not_the_background(renderer):
    still = renderer.render_planes(FaceState())
    moved = renderer.render_planes(FaceState(head_dx=2.0, head_dy=-1.0))
    assert not np.array_equal(still, moved)
    assert np.array_equal(still[:240, :40], moved[:240, :40])  # the left edge is background


def test_bad_look_values_fall_back_to_defaults():
    look = FaceLook.from_dict(
        {"skin": "pink", "hair": "#12", "eyes": 7, "lips": "#ABC", "hairStyle": "mohawk"}
    )
    defaults = FaceLook()
    assert (look.skin, look.hair, look.eyes) == (defaults.skin, defaults.hair, defaults.eyes)
    assert look.lips == "#aabbcc"
    assert look.hair_style == defaults.hair_style
    assert FaceLook.from_dict(None) == defaults
    assert FaceLook.from_dict({"hairStyle": "Long"}).hair_style == "long"


@pytest.mark.parametrize("style", ["bob", "long", "short", "bun"])
def test_every_hair_style_renders(style):
    frame = FaceRenderer({**LOOK, "hairStyle": style}).render(
        FaceState(mouth_open=0.5, mouth_shape=Viseme.OPEN)
    )
    # Hair is darker than skin: the top of the head is hair.
    assert pixel_rgb(frame.to_ndarray(), 160, 50).mean() < hex_rgb(LOOK["skin"]).mean() - 40


# --- motion -----------------------------------------------------------------------------------


def run_animator(
    animator: FaceAnimator, seconds: float, start: float = 100.0
) -> list[tuple[float, FaceState]]:
    frames = round(seconds * FPS)
    return [(start + i * FRAME, animator.state_at(start + i * FRAME)) for i in range(frames)]


def test_idle_blinks_come_every_two_to_six_seconds_and_close_the_eyes():
    for seed in range(5):
        states = run_animator(FaceAnimator(fps=FPS, seed=seed), 10.0)
        closed_at = [t for t, state in states if state.blink >= 0.99]
        assert 2 <= len(closed_at) <= 7, (seed, closed_at)
        assert closed_at[0] - 100.0 <= 6.0
        # Blinks are brief: eyes are never more than half closed for long.
        half_closed = sum(1 for _, state in states if state.blink > 0.5)
        assert half_closed <= 2 * len(closed_at) + 1
        assert all(state.mouth_open == 0 for _, state in states)


def test_idle_face_sways_a_little_and_looks_around():
    states = [state for _, state in run_animator(FaceAnimator(fps=FPS, seed=3), 20.0)]
    assert max(abs(s.head_dx) for s in states) <= 3 and max(abs(s.head_dy) for s in states) <= 3
    assert max(s.head_dx for s in states) - min(s.head_dx for s in states) > 1.0
    assert any(abs(s.gaze_dx) > 0.5 for s in states)


def test_a_speech_timeline_opens_and_closes_the_mouth_on_time():
    animator = FaceAnimator(fps=FPS, seed=1)
    start = 100.0
    animator.state_at(start)
    speech_start = start + 0.5
    animator.speech_timeline_push(
        speech_start, [(0.0, Viseme.OPEN, 0.9), (0.3, Viseme.ROUND, 0.7), (0.6, Viseme.CLOSED, 0.0)]
    )
    states = run_animator(animator, 2.0, start=start + FRAME)
    opened = [t for t, s in states if s.mouth_open > 0.4]
    assert abs(opened[0] - speech_start) <= FRAME + 1e-9
    assert abs(opened[-1] - (speech_start + 0.6)) <= FRAME + 1e-9
    shapes = {s.mouth_shape for t, s in states if speech_start + 0.1 <= t < speech_start + 0.25}
    assert shapes == {Viseme.OPEN}
    shapes = {s.mouth_shape for t, s in states if speech_start + 0.4 <= t < speech_start + 0.55}
    assert shapes == {Viseme.ROUND}
    assert all(s.mouth_open == 0 for t, s in states if t >= speech_start + 0.8)
    # No flicker: while the vowel holds, openness only rises then settles.
    held = [s.mouth_open for t, s in states if speech_start <= t < speech_start + 0.28]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(held))


def test_speech_stop_closes_the_mouth_within_100_ms():
    animator = FaceAnimator(fps=FPS, seed=2)
    animator.state_at(100.0)
    animator.speech_timeline_push(100.0, [(0.0, Viseme.OPEN, 1.0), (5.0, Viseme.CLOSED, 0.0)])
    states = run_animator(animator, 0.5, start=100.0 + FRAME)
    assert states[-1][1].mouth_open > 0.9
    stop_at = states[-1][0] + 0.01
    animator.speech_stop(stop_at)
    after = run_animator(animator, 0.5, start=states[-1][0] + FRAME)
    assert all(s.mouth_open == 0 for t, s in after if t >= stop_at + 0.1)


def test_a_long_talk_forgets_spoken_keys_and_moves_the_mouth_as_keeping_them_all_would(monkeypatch):
    """Keys already spoken are dropped as the face moves on: over a long talk the animator
    holds a few dozen, not all of them, and every frame is the one keeping all would give."""
    import calls.pipeline.avatar.animator as animator_module

    shapes = [Viseme.OPEN, Viseme.WIDE, Viseme.ROUND, Viseme.TEETH_ON_LIP, Viseme.CLOSED]

    def talk(prune_after: int) -> tuple[list[FaceState], int]:
        monkeypatch.setattr(animator_module, "KEYS_PRUNE_AFTER", prune_after)
        animator = FaceAnimator(fps=FPS, seed=6)
        animator.state_at(100.0)
        states: list[FaceState] = []
        most = 0
        for sentence in range(30):  # 30 sentences of 40 phonemes, 2 s apart, pushed as they start
            start = 100.0 + FRAME + sentence * 2.0
            events = [
                (index * 0.04, shapes[(index + sentence) % 5], 0.3 + (index % 7) / 10) for index in range(40)
            ]
            events.append((1.6, Viseme.CLOSED, 0.0))
            animator.speech_timeline_push(start, events)
            states += [state for _, state in run_animator(animator, 2.0, start=start)]
            most = max(most, len(animator._keys))
        return states, most

    pruned, most_kept = talk(animator_module.KEYS_PRUNE_AFTER)
    unpruned, most_unpruned = talk(10**9)
    assert pruned == unpruned
    assert any(state.mouth_open > 0.5 for state in pruned)
    assert most_unpruned == 30 * 41
    assert most_kept <= animator_module.KEYS_PRUNE_AFTER + 41


def test_audio_levels_move_the_mouth_when_there_is_no_timeline():
    animator = FaceAnimator(fps=FPS, seed=4)
    animator.state_at(100.0)
    for i in range(25):  # 0.5 s of loud audio in 20 ms pieces, then silence
        animator.audio_level_push(100.0 + i * 0.02, 0.1 if i < 15 else 0.0)
    states = run_animator(animator, 0.8, start=100.0 + FRAME)
    assert max(s.mouth_open for t, s in states if t < 100.3) > 0.5
    assert all(s.mouth_open == 0 for t, s in states if t >= 100.5)


def test_the_phoneme_mapping_covers_espeak_mnemonics():
    expected = {
        Viseme.CLOSED: "p b m",
        Viseme.TEETH_ON_LIP: "f v",
        Viseme.OPEN: "a A @",
        Viseme.WIDE: "E e i I s z t d k g n N h j T D",
        Viseme.ROUND: "o O u U w r S Z tS dZ",
    }
    for viseme, phonemes in expected.items():
        for phoneme in phonemes.split():
            assert viseme_for_phoneme(phoneme) is viseme, phoneme
    assert viseme_for_phoneme("l") in set(Viseme)
    assert viseme_for_phoneme("'aI") is Viseme.OPEN  # stress mark, diphthong
    assert viseme_for_phoneme("i:") is Viseme.WIDE  # length mark
    assert viseme_for_phoneme("_:") is Viseme.CLOSED  # pause
    events = phoneme_events([(0.0, "h"), (0.08, "@"), (0.16, "l"), (0.22, "oU")], end_offset=0.4)
    assert events[1][1] is Viseme.OPEN and events[-1] == (0.4, Viseme.CLOSED, 0.0)


# --- the track --------------------------------------------------------------------------------


class FakeAudio:
    def __init__(self) -> None:
        self.listeners: list = []


async def test_the_track_sends_frames_at_20_fps_with_90khz_pts():
    audio = FakeAudio()
    track = AvatarVideoTrack(look=LOOK, audio=audio, seed=5)
    assert len(audio.listeners) == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames = []
    while loop.time() - started < 0.5:
        frames.append(await track.recv())
    assert len(frames) >= 9
    assert [f.pts for f in frames] == [i * 4500 for i in range(len(frames))]
    assert all(f.time_base.denominator == 90000 and f.format.name == "yuv420p" for f in frames)
    track.stop()
    assert audio.listeners == []
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_the_track_feeds_audio_levels_to_the_animator():
    audio = FakeAudio()
    track = AvatarVideoTrack(look=LOOK, audio=audio, seed=6)
    loud = (np.sin(np.arange(960) / 5) * 8000).astype(np.int16).tobytes()
    now = track.clock()
    for i in range(10):
        audio.listeners[0].on_piece(pcm=loud, started_at=now + i * 0.02, speaking=True)
    state = track.animator.state_at(now)
    state = track.animator.state_at(now + 0.1)
    assert state.mouth_open > 0.3
    track.stop()


class FakeSender:
    """What `Vp8InlineEncoder` reads of aiortc's RTCRtpSender: a keyframe flag and its encoder."""

    def __init__(self, bitrate: int) -> None:
        self._RTCRtpSender__force_keyframe = False
        self._RTCRtpSender__encoder = type("Encoder", (), {"target_bitrate": bitrate})()


def _vp8_keyframe(packet: av.Packet) -> bool:
    return not bytes(packet)[0] & 1  # VP8 frame tag: bit 0 clear on a key frame


async def test_an_encoding_track_sends_vp8_that_decodes_to_the_face():
    track = AvatarVideoTrack(look=LOOK, seed=7, encode=True)
    sender = FakeSender(bitrate=200_000)
    track.sender_attach(sender)
    decoder = av.CodecContext.create("libvpx", "r")
    packets = [await track.recv() for _ in range(4)]
    pts = [p.pts for p in packets]
    assert pts[0] == 0 and all(b > a and b % 4500 == 0 for a, b in itertools.pairwise(pts))
    assert _vp8_keyframe(packets[0]) and not any(_vp8_keyframe(p) for p in packets[1:])
    frames = [frame for packet in packets for frame in decoder.decode(packet)]
    assert len(frames) == 4 and (frames[-1].width, frames[-1].height) == (320, 240)
    # The decoded face matches the drawn one (VP8 is lossy: compare the luma loosely).
    drawn = track.renderer.render_planes(track.animator.state_at(track.frame_time))[:240]
    decoded = frames[-1].to_ndarray(format="yuv420p")[:240].astype(int)
    assert np.abs(decoded - drawn).mean() < 4
    track.stop()


async def test_an_encoding_track_honours_keyframe_requests_and_the_bitrate_estimate():
    track = AvatarVideoTrack(look=LOOK, seed=8, encode=True)
    sender = FakeSender(bitrate=200_000)
    track.sender_attach(sender)
    await track.recv()
    assert not _vp8_keyframe(await track.recv())
    sender._RTCRtpSender__force_keyframe = True  # what aiortc does on a PLI or FIR
    assert _vp8_keyframe(await track.recv())
    assert sender._RTCRtpSender__force_keyframe is False
    assert not _vp8_keyframe(await track.recv())
    sender._RTCRtpSender__encoder.target_bitrate = 100_000  # a receiver estimate (REMB)
    await track.recv()
    assert track._encoder is not None and track._encoder.bitrate == 100_000
    track.stop()


async def test_an_encoding_track_draws_an_unchanged_picture_once(monkeypatch):
    track = AvatarVideoTrack(look=LOOK, seed=9, encode=True)
    track.sender_attach(FakeSender(bitrate=200_000))
    await track.recv()  # the renderer is ready
    assert track.renderer is not None
    drawn = []
    render = track.renderer.render
    monkeypatch.setattr(track.renderer, "render", lambda state: drawn.append(state) or render(state))
    first = track._last_key
    still = track.renderer.frame_key(track.animator.state_at(0.0))
    monkeypatch.setattr(track.renderer, "frame_key", lambda state: still)  # nothing moves
    packets = [await track.recv() for _ in range(3)]
    assert len(drawn) == (0 if still == first else 1)  # drawn once at most, then reused
    # Sent again only every REPEAT_SEND_SECONDS (5 frames at 20 fps), not at every frame.
    assert [p.pts for p in packets] == ([4500, 27000, 49500] if still != first else [22500, 45000, 67500])
    track.stop()


async def test_an_idle_track_answers_a_keyframe_request_at_the_next_frame(monkeypatch):
    track = AvatarVideoTrack(look=LOOK, seed=9, encode=True)
    sender = FakeSender(bitrate=200_000)
    track.sender_attach(sender)
    first = await track.recv()
    monkeypatch.setattr(track.renderer, "frame_key", lambda state: track._last_key)  # nothing moves
    loop = asyncio.get_running_loop()
    loop.call_later(0.06, setattr, sender, "_RTCRtpSender__force_keyframe", True)  # a PLI, mid-gap
    requested = await track.recv()
    assert _vp8_keyframe(requested) and requested.pts - first.pts < 22500  # before the 0.25 s repeat
    track.stop()


def test_equal_frame_keys_mean_identical_frames(renderer):
    animator = FaceAnimator(fps=FPS, seed=3)
    frames: dict = {}
    for index in range(400):
        state = animator.state_at(index * FRAME)
        planes = renderer.render_planes(state)
        key = renderer.frame_key(state)
        if key in frames:
            assert np.array_equal(frames[key], planes)
        frames[key] = planes
    assert len(frames) < 400  # idle frames do repeat


# --- the portrait -----------------------------------------------------------------------------

PORTRAIT_SIZE = (600, 800)  # a portrait-format photo: framing crops it to 4:3 round the face
MOUTH = {"x": 0.5, "y": 0.56, "width": 0.18}
EYES = [{"x": 0.4, "y": 0.4, "width": 0.1}, {"x": 0.6, "y": 0.4, "width": 0.1}]


def draw_portrait(path, size=PORTRAIT_SIZE, image_format="PNG") -> str:
    """A head-and-shoulders picture with its features where MOUTH and EYES say."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (150, 170, 190))
    draw = ImageDraw.Draw(image)
    for row in range(height):  # a soft vertical gradient, like a studio backdrop
        shade_value = int(20 * row / height)
        draw.line([(0, row), (width, row)], fill=(150 - shade_value, 170 - shade_value, 190 - shade_value))

    def box(cx, cy, rx, ry):
        return [(cx - rx) * width, (cy - ry) * height, (cx + rx) * width, (cy + ry) * height]

    draw.ellipse(box(0.5, 1.05, 0.45, 0.25), fill=(70, 90, 120))  # shoulders
    draw.rectangle(box(0.5, 0.72, 0.08, 0.1), fill=(215, 170, 140))  # neck
    draw.ellipse(box(0.5, 0.36, 0.23, 0.22), fill=(60, 40, 30))  # hair
    draw.ellipse(box(0.5, 0.45, 0.18, 0.2), fill=(225, 180, 150))  # face
    for eye in EYES:
        draw.ellipse(box(eye["x"], eye["y"], eye["width"] / 2, 0.012), fill=(245, 245, 240))
        draw.ellipse(box(eye["x"], eye["y"], 0.015, 0.012), fill=(60, 50, 40))
    draw.ellipse(box(MOUTH["x"], MOUTH["y"], MOUTH["width"] / 2, 0.012), fill=(170, 80, 85))
    image.save(path, format=image_format)
    return str(path)


@pytest.fixture
def portrait_look(tmp_path) -> FaceLook:
    path = draw_portrait(tmp_path / "portrait.png")
    return FaceLook.from_dict({**LOOK, "portraitMouth": MOUTH, "portraitEyes": EYES}, portrait=path)


def test_a_portrait_is_shown_framed_on_the_face(portrait_look):
    renderer = PortraitRenderer(portrait_look)
    frame = renderer.render(FaceState())
    assert (frame.format.name, frame.width, frame.height) == ("yuv420p", 320, 240)
    planes = frame.to_ndarray()
    # The face fills the middle of the frame; the backdrop shows in the corners.
    assert np.abs(pixel_rgb(planes, 160, 100) - np.array([225, 180, 150])).max() < 14
    assert np.abs(pixel_rgb(planes, 4, 4) - np.array([150, 170, 190])).max() < 24
    x0, y0, x1, y1 = renderer.feature_box("mouth")
    assert x0 < 160 < x1 and 100 < (y0 + y1) / 2 < 200


def test_an_open_portrait_mouth_changes_only_the_mouth_region(portrait_look):
    renderer = PortraitRenderer(portrait_look)
    closed = renderer.render_planes(FaceState())
    mouth = renderer.feature_box("mouth")
    x0, y0, x1, y1 = mouth
    for shape in Viseme:
        opened = renderer.render_planes(FaceState(mouth_open=0.8, mouth_shape=shape))
        box = changed_box(closed, opened)
        assert box is not None and inside(box, mouth), (shape, box, mouth)
        # Around the lips the picture really changes (it opens, or at least parts with teeth).
        region = (slice(y0, y1), slice(x0, x1))
        assert np.abs(opened[region].astype(int) - closed[region].astype(int)).sum() > 1500, shape
    # Open vowels show a dark inside that the closed mouth does not have.
    opened = renderer.render_planes(FaceState(mouth_open=0.9, mouth_shape=Viseme.OPEN))
    assert opened[y0:y1, x0:x1].min() < closed[y0:y1, x0:x1].min() - 40
    assert np.array_equal(renderer.render_planes(FaceState(mouth_open=0.0)), closed)


def test_a_portrait_blinks_where_its_eyes_are_marked_and_only_there(portrait_look, tmp_path):
    renderer = PortraitRenderer(portrait_look)
    open_eyes = renderer.render_planes(FaceState())
    closed = renderer.render_planes(FaceState(blink=1.0))
    left, right = renderer.feature_box("eye_left"), renderer.feature_box("eye_right")
    both = (left[0], min(left[1], right[1]), right[2], max(left[3], right[3]))
    box = changed_box(open_eyes, closed)
    assert box is not None and inside(box, both)
    # Closed, the white of the eye is covered by the lid.
    eye = (slice(left[1], left[3]), slice(left[0], left[2]))
    assert closed[eye].max() < open_eyes[eye].max() - 15
    # Without marked eyes there is nothing to close.
    unmarked = PortraitRenderer(dataclasses.replace(portrait_look, portrait_eyes=None))
    assert np.array_equal(unmarked.render_planes(FaceState()), unmarked.render_planes(FaceState(blink=1.0)))


def test_an_idle_portrait_breathes_subtly(portrait_look):
    renderer = PortraitRenderer(portrait_look)
    animator = FaceAnimator(fps=FPS, seed=3)
    frames = [renderer.render_planes(state) for _, state in run_animator(animator, 5.0)]
    differences = [
        np.abs(a[:240].astype(int) - b[:240].astype(int)).mean() for a, b in itertools.pairwise(frames)
    ]
    assert sum(1 for difference in differences if difference > 0) >= 10  # it moves, often
    breath_in = renderer.render_planes(FaceState(breath=1.0))
    breath_out = renderer.render_planes(FaceState(breath=-1.0))
    assert 0 < np.abs(breath_in[:240].astype(int) - breath_out[:240].astype(int)).mean() < 12


def test_a_transparent_or_jpeg_portrait_is_read_too(tmp_path):
    from PIL import Image

    jpeg = draw_portrait(tmp_path / "portrait.jpg", image_format="JPEG")
    assert isinstance(renderer_create(FaceLook(portrait=jpeg)), PortraitRenderer)
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    rgba.paste((200, 150, 120, 255), (100, 80, 200, 240))
    rgba.save(tmp_path / "cut-out.png")
    renderer = renderer_create(FaceLook(background="#336699", portrait=str(tmp_path / "cut-out.png")))
    assert isinstance(renderer, PortraitRenderer)
    # What was transparent shows the look's background colour.
    assert np.abs(pixel_rgb(renderer.render_planes(FaceState()), 4, 4) - hex_rgb("#336699")).max() < 10


def test_a_missing_or_unreadable_portrait_falls_back_to_the_drawn_face(tmp_path, caplog):
    (tmp_path / "notes.png").write_text("not a picture")
    tiny = draw_portrait(tmp_path / "tiny.png", size=(64, 64))
    for path in (str(tmp_path / "missing.png"), str(tmp_path / "notes.png"), tiny):
        renderer = renderer_create(FaceLook(portrait=path))
        assert isinstance(renderer, FaceRenderer), path
        assert renderer.render(FaceState()).width == 320
    assert "portrait not shown" in caplog.text


def test_portrait_positions_in_the_look_are_read_and_checked():
    look = FaceLook.from_dict({"portraitMouth": MOUTH, "portraitEyes": list(reversed(EYES))})
    assert look.portrait_mouth == PortraitFeature(0.5, 0.56, 0.18)
    assert look.portrait_eyes is not None and look.portrait_eyes[0].x < look.portrait_eyes[1].x
    # The portrait's file never comes from the look (which anyone editing the look could set).
    assert FaceLook.from_dict({"portrait": "/etc/passwd"}).portrait is None
    lenient = FaceLook.from_dict(
        {"portraitMouth": {"x": 2, "y": 0.5, "width": 0.1}, "portraitEyes": [EYES[0]]}
    )
    assert lenient.portrait_mouth == FaceLook().portrait_mouth and lenient.portrait_eyes is None
    assert look_problems({**LOOK, "portraitMouth": MOUTH, "portraitEyes": EYES}) == {}
    problems = look_problems(
        {
            "skin": "pink",
            "portraitMouth": {"x": 0.5, "y": 1.5, "width": 0.1},
            "portraitEyes": [EYES[0]],
            "portrait": "/x.png",
            "hairStyle": "mohawk",
        }
    )
    assert set(problems) == {"skin", "portraitMouth", "portraitEyes", "portrait", "hairStyle"}
    assert "fractions" in problems["portraitMouth"] and "two eyes" in problems["portraitEyes"]
    assert set(look_problems(["skin"])) == {""}


# --- shared preparation -----------------------------------------------------------------------


def test_renderers_of_one_look_share_its_prepared_layers(portrait_look, tmp_path):
    assert FaceRenderer(LOOK).layers is FaceRenderer(dict(LOOK)).layers
    assert FaceRenderer(LOOK).layers is not FaceRenderer({**LOOK, "skin": "#8d5a3b"}).layers
    assert FaceRenderer(LOOK).layers is not FaceRenderer(LOOK, width=160, height=120).layers
    first = PortraitRenderer(portrait_look)
    assert PortraitRenderer(portrait_look).layers is first.layers
    # A replaced file (a new upload under the same name) is prepared afresh.
    assert portrait_look.portrait is not None
    draw_portrait(portrait_look.portrait, size=(640, 800))
    os.utime(portrait_look.portrait, ns=(1, 1))
    assert PortraitRenderer(portrait_look).layers is not first.layers


def test_the_shared_cache_builds_a_missing_entry_once_and_keeps_the_newest():
    cache = SharedCache(capacity=2)
    builds = []
    gate = threading.Event()

    def build():
        builds.append(1)
        gate.wait(1.0)
        return object()

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(cache.get, "a", build) for _ in range(4)]
        time.sleep(0.05)
        gate.set()
        results = {id(future.result()) for future in futures}
    assert len(builds) == 1 and len(results) == 1
    cache.get("b", object)
    cache.get("a", object)  # a is now the most recent
    cache.get("c", object)
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    with pytest.raises(RuntimeError):
        cache.get("d", lambda: (_ for _ in ()).throw(RuntimeError("broken")))
    assert cache.get("d", lambda: "fixed") == "fixed"  # a failed build is not remembered


async def test_the_track_prepares_a_new_look_off_the_event_loop(portrait_look):
    look = dataclasses.replace(portrait_look, lips="#a1b2c3")  # not prepared in this process yet
    assert not renderer_ready(look)
    track = AvatarVideoTrack(look=look, seed=1)
    assert track.renderer is None  # being built in a worker thread
    frame = await track.recv()
    assert isinstance(track.renderer, PortraitRenderer) and frame.width == 320
    assert renderer_ready(look)
    # Now prepared, the next session's track has its renderer at once.
    second = AvatarVideoTrack(look=look, seed=2)
    assert isinstance(second.renderer, PortraitRenderer)
    track.stop()
    second.stop()


async def test_a_track_stopped_while_its_look_is_prepared_ends_cleanly():
    track = AvatarVideoTrack(look={**LOOK, "skin": "#123456"}, seed=1)
    assert track.renderer is None
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_the_track_takes_the_portrait_by_path(portrait_look):
    track = AvatarVideoTrack(look={"portraitMouth": MOUTH}, portrait=portrait_look.portrait, seed=1)
    await track.recv()
    assert isinstance(track.renderer, PortraitRenderer)
    assert track.renderer.look.portrait_mouth == PortraitFeature(**MOUTH)
    track.stop()


def test_the_animator_breathes():
    breaths = [state.breath for _, state in run_animator(FaceAnimator(fps=FPS, seed=3), 10.0)]
    assert max(breaths) > 0.9 and min(breaths) < -0.9


# --- ready to speak -------------------------------------------------------------------------


def talking_states(count: int = 300, seed: int = 5) -> list[FaceState]:
    """A talking face's states: any viseme, any openness, the head and breath moving a little."""
    rng = np.random.default_rng(seed)
    return [
        FaceState(
            mouth_open=float(rng.uniform(0.0, 1.0)),
            mouth_shape=list(Viseme)[int(rng.integers(len(Viseme)))],
            head_dx=float(rng.uniform(-1.5, 1.5)),
            head_dy=float(rng.uniform(-1.5, 1.5)),
            breath=float(rng.uniform(-1.0, 1.0)),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("kind", ["face", "portrait"])
def test_a_face_prepared_for_speech_draws_no_mouth_while_it_talks(kind, tmp_path, monkeypatch):
    """`prepare_speech` (the warm-up's) draws every mouth patch a talking face uses, so none is
    drawn on the event loop during a call's first sentences."""
    if kind == "face":  # a look of its own: its layers are not shared with another test's
        renderer = FaceRenderer({**LOOK, "skin": "#d9a47f", "lips": "#a0404a"})
        layers_class, draw = type(renderer.layers), "_draw_patch"
    else:
        path = draw_portrait(tmp_path / "speaker.png")
        renderer = PortraitRenderer(
            FaceLook.from_dict({**LOOK, "portraitMouth": MOUTH, "portraitEyes": EYES}, portrait=path)
        )
        layers_class, draw = type(renderer.layers), "_draw_mouth"
    assert renderer.prepare_speech() > 100
    drawn: list[tuple] = []
    original = getattr(layers_class, draw)

    def counting(self, *args, **kwargs):
        drawn.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(layers_class, draw, counting)
    for state in talking_states():
        renderer.render_planes(state)
    assert not [args for args in drawn if kind == "portrait" or args[0][0] == "mouth"], drawn[:3]
