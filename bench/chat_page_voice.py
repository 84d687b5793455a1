"""Talk to a running Parley's chat page as a visitor would, with a fake microphone.

Start the server first (`make run`), then: `python bench/chat_page_voice.py`. Headless
Chromium opens the persona's page, clicks Start, and its fake microphone plays a WAV made
with espeak-ng: a question from the demo persona's knowledge, then, while the persona
answers, a second question spoken over it. Prints what the page showed and when (the user's
live words, the history, the state), and saves screenshots (one mid-answer) to `--out`.

With `--human N`, the microphone plays N recordings of real people instead (the held-out
utterances of `bench/human_speech.py`, 9 s apart so each is answered), and the script prints
what the page heard of each beside what was said, with the word error rate.

Chromium's echo cancellation is turned off for the page (as in tests/browser/test_voice_loop.py):
headless, the persona's voice goes to a null sink the canceller still takes as its far end, and
it would hold the fake microphone back while the persona speaks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.spoken import RATE, noise, spoken_pcm, wav_write  # noqa: E402

QUESTION = "Are you open on Monday?"
QUESTION_AT_SECONDS = 3.0
INTERRUPTION = "Sorry, where are you located?"
INTERRUPTION_AFTER_ANSWER_STARTS_SECONDS = 1.5
# espeak speaks far hotter than a voice in a microphone (see tests/browser/test_voice_loop.py).
SPEECH_GAIN = 0.25
OVER_TALK_GAIN = 0.8

WITHOUT_AUDIO_PROCESSING = """
(() => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (constraints) => {
    if (constraints && constraints.audio) {
      const audio = typeof constraints.audio === "object" ? constraints.audio : {};
      constraints = {...constraints, audio: {...audio, echoCancellation: false,
        noiseSuppression: false, autoGainControl: false}};
    }
    return original(constraints);
  };
})();
"""


async def microphone_wav(path: Path, answer_offset: float) -> Path:
    question = await spoken_pcm(QUESTION)
    interruption = await spoken_pcm(INTERRUPTION)
    interruption_at = QUESTION_AT_SECONDS + question.size / RATE + answer_offset
    samples = noise(interruption_at + interruption.size / RATE + 30.0)
    for speech, at, gain in (
        (question, QUESTION_AT_SECONDS, SPEECH_GAIN),
        (interruption, interruption_at, OVER_TALK_GAIN),
    ):
        offset = int(at * RATE)
        samples[offset : offset + speech.size] += speech * gain
    return wav_write(path, samples.astype(np.float32))


# Seconds between the starts of two human recordings: room for the persona's answer.
HUMAN_SPACING_SECONDS = 9.0


def human_microphone_wav(path: Path, count: int) -> tuple[Path, list[str]]:
    """Held-out human recordings, one every HUMAN_SPACING_SECONDS, over the room's noise."""
    import soxr

    from bench.human_speech import human_utterances

    chosen = [item for item in human_utterances() if item.held_out][:count]
    samples = noise(QUESTION_AT_SECONDS + HUMAN_SPACING_SECONDS * len(chosen) + 20.0)
    for index, item in enumerate(chosen):
        speech = soxr.resample(item.samples.astype(np.float32), 16_000, RATE)
        offset = int((QUESTION_AT_SECONDS + index * HUMAN_SPACING_SECONDS) * RATE)
        samples[offset : offset + speech.size] += speech
    return wav_write(path, samples.astype(np.float32)), [item.text for item in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running server")
    parser.add_argument("--persona", default="mara", help="the persona's slug")
    parser.add_argument("--out", default="var/chat-page-voice", help="where screenshots go")
    parser.add_argument("--human", type=int, default=0, help="play N held-out human recordings instead")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The answer to the question starts ~0.4 s after it ends, plus the call's set-up: the
    # interruption is placed well inside the answer (Mara's Monday answer is ~6 s long).
    said: list[str] = []
    if args.human:
        wav, said = human_microphone_wav(out / "microphone.wav", args.human)
    else:
        wav = asyncio.run(
            microphone_wav(
                out / "microphone.wav", answer_offset=0.4 + INTERRUPTION_AFTER_ANSWER_STARTS_SECONDS
            )
        )
    questions = len(said) or 2
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",  # scripts/ensure-chromium installs it
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.add_init_script(WITHOUT_AUDIO_PROCESSING)
        started = time.monotonic()

        def at() -> str:
            return f"{time.monotonic() - started:5.1f} s"

        page.goto(f"{args.url}/p/{args.persona}/")
        page.click("#start-button")
        page.wait_for_function(
            "() => document.querySelector('#state-pill').dataset.state === 'live'", timeout=60_000
        )
        print(f"{at()}  call live (the microphone's question starts {QUESTION_AT_SECONDS:.0f} s after Start)")
        live_at = time.monotonic()
        seen_user: set[str] = set()
        history_seen = 0
        screenshot_taken = False
        deadline = time.monotonic() + 45 + HUMAN_SPACING_SECONDS * len(said)
        while time.monotonic() < deadline:
            caption = page.evaluate(
                "() => ({speaker: document.getElementById('caption').dataset.speaker,"
                " text: document.getElementById('caption-text').textContent})"
            )
            if caption["speaker"] == "user" and caption["text"] and caption["text"] not in seen_user:
                seen_user.add(caption["text"])
                print(f"{at()}  live caption (user): {caption['text']!r}")
            if caption["speaker"] == "persona" and not screenshot_taken and len(caption["text"].split()) >= 4:
                page.screenshot(path=str(out / "mid-answer.png"))
                screenshot_taken = True
                print(f"{at()}  screenshot mid-answer: {out / 'mid-answer.png'}")
            history = page.evaluate(
                "() => [...document.querySelectorAll('#history li')].map((li) =>"
                " `${li.className}: ${li.textContent.trim().replace(/\\s+/g, ' ')}`)"
            )
            for line in history[history_seen:]:
                print(f"{at()}  history + {line}")
            history_seen = max(history_seen, len(history))
            answered = bool(history) and "message-persona" in history[-1] and "interrupted" not in history[-1]
            if said:  # recordings may be heard as more turns than there are: wait for the last one
                if (
                    answered
                    and time.monotonic() - live_at > QUESTION_AT_SECONDS + HUMAN_SPACING_SECONDS * len(said)
                ):
                    break
            elif answered and sum("message-user" in line for line in history) >= questions:
                break  # every question asked, and the last one answered
            page.wait_for_timeout(100)
        page.wait_for_timeout(3000)
        history = page.evaluate(
            "() => [...document.querySelectorAll('#history li')].map((li) =>"
            " `${li.className}: ${li.textContent.trim().replace(/\\s+/g, ' ')}`)"
        )
        print("final history:")
        for line in history:
            print(f"  {line}")
        if said:
            from bench.voice_loop import word_errors

            # The history's user lines, without their "You" label; a recording may be heard as
            # two turns (a reader's pause), so the whole is compared with all that was said.
            heard = [
                line.split(":", 1)[1].strip().removeprefix("You")
                for line in history
                if "message-user" in line
            ]
            for text in said:
                print(f"  said  {text!r}")
            for text in heard:
                print(f"  heard {text!r}")
            errors, words = word_errors(" ".join(said), " ".join(heard))
            print(
                f"word error rate on the human recordings: {100 * errors / max(1, words):.1f} % ({errors}/{words})"
            )
        page.screenshot(path=str(out / "after.png"))
        print(f"screenshots in {out}/")
        browser.close()


if __name__ == "__main__":
    main()
