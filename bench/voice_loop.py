"""Benchmark of the listening persona: Parley is talked to over real WebRTC by aiortc clients.

Each client's microphone plays sentences spoken by espeak-ng (a male voice over a quiet noise
floor); Parley hears them (Silero VAD, SmartTurn, the persona's recogniser), answers with the
demo persona's built-in brain, and speaks. Prints:

- voice-to-voice latency: end of the user's speech in the sent audio → first reply audio
  received, median and p95, with its breakdown from the call's stored events (VAD end of
  speech, final transcript, turn decision, first reply audio sent);
- the same answers as the server recorded them while they happened (`TurnLatency`: end of
  speech → first audio sent, stage by stage), and how far the client's figure is from it (the
  network and the client's playout buffer, on loopback mostly the buffer);
- word error rate of what was recognised, in-domain (the persona's own questions) and general;
- barge-in stop time, median and max over a few interruptions: start of speech over the
  persona in the sent audio → its voice stops arriving;
- the client holds the persona's voice in a 2-packet (40 ms) playout buffer, about what a
  browser's adaptive buffer holds on loopback (aiortc's default is 4 packets, 80 ms);
- with `--sessions 1,4,...`: the same with that many clients at once, and the lowest audio
  frame rate any of them received.

It starts its own server on a throwaway database: `python bench/voice_loop.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webrtc_client import ParleyWebRTCClient, SessionRecord, video_decoding_disable  # noqa: E402
from bench.webrtc_sessions import DEMO_KEY, mint, server_log_tail, start_server  # noqa: E402

IN_DOMAIN = [
    "What are your opening hours?",
    "Where are you?",
    "What do you recommend?",
    "How much does a latte cost?",
    "Is anything gluten free?",
    "Can I order a birthday cake?",
    "Do you deliver?",
    "Are you open on Monday?",
]
GENERAL = [
    "My sister is visiting next week.",
    "The weather was lovely this morning.",
    "I think I left my umbrella here yesterday.",
    "We are planning a small party for twenty people.",
    "Thank you very much for your help.",
    "I would like to speak to the manager please.",
]
BARGE_IN_QUESTION = "What is on the menu?"
# Speech over the persona, each tried once. How they begin matters: Silero hears voicing, so a
# leading fricative ("Sorry": ~100 ms of "s") is noticed later than a vowel or a "w".
BARGE_IN_INTERRUPTIONS = (
    "Sorry, where are you located?",
    "Wait, do you deliver?",
    "Actually, is there parking?",
    "Hold on, how can I pay?",
    "Can I ask about the cakes?",
)
# The client's playout buffer for the persona's voice, in 20 ms packets: about what a browser's
# adaptive jitter buffer holds on a quiet loopback (aiortc's own default, 4, would add 40 ms to
# every figure that ends at "voice received").
PLAYOUT_PACKETS = 2
# Room noise after each spoken sentence, in seconds.
SPEECH_TAIL_SECONDS = 0.2
# A gap this long in the persona's voice means it stopped.
VOICE_GAP_SECONDS = 0.3
# Each barge-in trial starts once the persona's voice has been silent this long.
QUIET_BEFORE_TRIAL_SECONDS = 1.5
# What `barge_in` returns for an interruption that did not stop the voice.
MISSED = float("inf")
# The barge-in starts as this word of the menu answer is played (its captions arrive with it,
# since they follow the voice: at "sourdough", its second word, only ~0.3 s had been played).
BARGE_IN_AT_WORD = "loaf"


def voice_runs(loud: list[float], origin: float) -> str:
    """Loud packet times as runs without a gap of 60 ms or more, in seconds from `origin`."""
    runs: list[list[float]] = []
    for at in loud:
        if runs and at - runs[-1][1] < 0.06:
            runs[-1][1] = at
        else:
            runs.append([at, at])
    return ", ".join(f"{first - origin:+.2f}..{last - origin:+.2f}" for first, last in runs)


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


# What Whisper abbreviates where a reference spells it out.
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay"}


def number_words(number: int) -> list[str]:
    """0-9999 as spoken ("21" → twenty one): Whisper writes digits where a reference spells them."""
    if number < 20:
        return [_ONES[number]]
    if number < 100:
        return [_TENS[number // 10]] + (number_words(number % 10) if number % 10 else [])
    if number < 1000:
        return [_ONES[number // 100], "hundred"] + (number_words(number % 100) if number % 100 else [])
    return (
        number_words(number // 1000) + ["thousand"] + (number_words(number % 1000) if number % 1000 else [])
    )


def comparable_words(text: str) -> list[str]:
    """Lower-cased words without punctuation, numbers spelt out, hyphens as spaces."""
    words: list[str] = []
    spaced = text.lower().replace("-", " ").replace("%", " percent").replace("\u2019", "'")
    for word in re.findall(r"[a-z0-9']+", re.sub(r"(?<=\d)[.,:](?=\d)", " ", spaced)):
        word = _ABBREVIATIONS.get(word.strip("'"), word.strip("'"))
        if not word:
            continue
        if word.isdigit() and len(word) <= 4:
            words.extend(number_words(int(word)))
        else:
            words.append(word)
    return words


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length), compared as `comparable_words`."""
    ref, hyp = comparable_words(reference), comparable_words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1], len(ref)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def call_events(base_url: str, call_id: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.get(
            f"/v1/calls/{call_id}/events", headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()["events"]


def wall(event: dict) -> float:
    return datetime.fromisoformat(event["createdAt"].replace("Z", "+00:00")).timestamp()


async def speak(client: ParleyWebRTCClient, text: str) -> tuple[float, float, float]:
    """Queue `text` on the client's microphone: (speech start, speech end) monotonic, and end wall."""
    from tests.fakes.spoken import RATE, spoken_pcm, with_room

    speech = await spoken_pcm(text)
    lead = 0.3
    samples = with_room(speech, lead_seconds=lead, tail_seconds=SPEECH_TAIL_SECONDS)
    mono, wall_now = time.monotonic(), time.time()
    client.microphone.say(samples)
    duration = speech.size / RATE
    return mono + lead, mono + lead + duration, wall_now + lead + duration


async def one_utterance(client: ParleyWebRTCClient, base_url: str, text: str) -> dict:
    record = client.record
    users_before = len(record.speech_texts("user"))
    finished_before = record.persona_finished_count()
    answers_before = {chunk["message_id"] for chunk in record.speech_texts("persona")}
    queued_at = time.monotonic()
    _, end, end_wall = await speak(client, text)
    planned_dry = end + SPEECH_TAIL_SECONDS
    await client.wait_for(
        lambda: record.persona_finished_count() > finished_before, f"the answer to {text!r}"
    )
    # The end of speech is when the microphone really sent it: a busy client sends late, and
    # that lateness is the client's, not Parley's.
    dry_at = client.microphone.dry_at
    send_lag = max(0.0, dry_at[0] - planned_dry) if dry_at is not None and dry_at[0] > queued_at else 0.0
    end, end_wall = end + send_lag, end_wall + send_lag
    loud = next((t for t in record.loud_audio_frames if t > end), None)
    users = record.speech_texts("user")[users_before:]
    heard = " ".join(chunk["content"] for chunk in users)
    events = [e for e in await call_events(base_url, record.session_id) if wall(e) > end_wall - 10]

    def after(name: str) -> float | None:
        times = [wall(e) for e in events if e["event"] == name and wall(e) >= end_wall - 5]
        return (times[-1] - end_wall) * 1000 if times else None

    answer_id = next(
        (c["message_id"] for c in record.speech_texts("persona") if c["message_id"] not in answers_before),
        None,
    )
    await asyncio.sleep(0.6)
    return {
        "call_id": record.session_id,
        "answer_id": answer_id,
        "text": text,
        "heard": heard,
        "voice_to_voice_ms": (loud - end) * 1000 if loud else None,
        "vad_stop_ms": after("speech.ended"),
        "final_transcript_ms": after("user.message"),
        "turn_end_ms": after("turn.end"),
        "eager_ms": after("eager.turn"),
        "first_audio_sent_ms": after("bot.speaking"),
        "client_send_lag_ms": send_lag * 1000,
    }


async def until_quiet(client: ParleyWebRTCClient, seconds: float = QUIET_BEFORE_TRIAL_SECONDS) -> None:
    """Until the persona's voice has been silent for `seconds` (it may still be answering a
    fragment of the last trial: "Hold on," can be heard as a turn of its own)."""
    record = client.record
    deadline = time.monotonic() + client.step_timeout_seconds
    while time.monotonic() < deadline:
        last = record.loud_audio_frames[-1] if record.loud_audio_frames else 0.0
        if time.monotonic() - last >= seconds:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the persona never went quiet")


async def barge_in(client: ParleyWebRTCClient, base_url: str, interruption: str) -> float | None:
    """Speak over the persona's answer; ms from the user's speech start to the voice stopping,
    `MISSED` when it did not stop, None when the trial could not be measured."""
    record = client.record
    await until_quiet(client)
    finished_before = record.persona_finished_count()
    chunks_before = len(record.speech_texts("persona"))
    await speak(client, BARGE_IN_QUESTION)

    def spoken_so_far() -> str:
        return " ".join(chunk["content"] for chunk in record.speech_texts("persona")[chunks_before:]).lower()

    # Speak over it in the middle of its longest stretch without a pause ("Our sourdough country
    # loaf and the cardamom buns are the favourites."): a pause between sentences or at a comma
    # would read as the voice stopping.
    await client.wait_for(
        lambda: BARGE_IN_AT_WORD in spoken_so_far(), f"{BARGE_IN_AT_WORD!r} in the menu answer"
    )
    start, _, _ = await speak(client, interruption)
    start_wall = time.time() - (time.monotonic() - start)
    await client.wait_for(lambda: record.persona_finished_count() > finished_before + 1, "the second answer")
    if not any(start - VOICE_GAP_SECONDS < t < start for t in record.loud_audio_frames):
        print(f"barge-in: the persona was not speaking when {interruption!r} began; not measured")
        return None
    events = await call_events(base_url, record.session_id)
    if not any(e["event"] == "bot.interrupted" and wall(e) > start_wall for e in events):
        print(
            f"barge-in: {interruption!r} did not interrupt the persona (its answer ended first?); not measured"
        )
        return None
    loud = [t for t in record.loud_audio_frames if t >= start]
    if len(loud) < 2 or loud[1] - loud[0] > VOICE_GAP_SECONDS:
        print(f"barge-in: the voice had stopped by itself when {interruption!r} began; not measured")
        return None
    for previous, current in itertools.pairwise(loud):
        if current - previous > VOICE_GAP_SECONDS:
            return (previous - start) * 1000
    # The voice never paused from the interruption to the end of the next answer: it was not
    # stopped (or the answers ran into each other). A miss, not a fast stop.
    print(f"barge-in: the voice did not stop after {interruption!r} began; counted as a miss")
    print(f"    persona's voice received (loud packets) from its start: {voice_runs(loud, start)}")
    for event in events:
        if wall(event) > start_wall - 0.5:
            data = event.get("data") or {}
            detail = data.get("text") or data.get("lastWord") or data.get("word") or ""
            print(f"    {wall(event) - start_wall:+7.3f} s  {event['event']}  {detail}")
    return MISSED


async def session(
    base_url: str,
    token: str,
    utterances: list[str],
    with_barge_in: bool,
    listen_until: asyncio.Event | None = None,
) -> dict:
    from tests.fakes.spoken import ScriptedMicrophone

    microphone = ScriptedMicrophone()
    async with ParleyWebRTCClient(
        base_url=base_url,
        session_token=token,
        step_timeout_seconds=60,
        microphone=microphone,
        playout_packets=PLAYOUT_PACKETS,
        inline_audio=True,
    ) as client:
        record = client.record
        try:
            await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
            greeting_seconds = greeting_length(record)
            await asyncio.sleep(0.5)
            rows = [await one_utterance(client, base_url, text) for text in utterances]
            if listen_until is not None:  # a session that only listens stays until the speakers are done
                await listen_until.wait()
            window = (record.audio_frames[0], record.audio_frames[-1]) if record.audio_frames else (0, 1)
            audio_fps = len(record.audio_frames) / max(1e-6, window[1] - window[0])
            stops: list[tuple[str, float | None]] = []
            for interruption in BARGE_IN_INTERRUPTIONS if with_barge_in else ():
                stops.append((interruption, await barge_in(client, base_url, interruption)))
                await asyncio.sleep(1.0)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{await events_told(base_url, record.session_id)}") from None
    return {"rows": rows, "audio_fps": audio_fps, "barge_ins": stops, "greeting_seconds": greeting_seconds}


def greeting_length(record: SessionRecord) -> float:
    """Seconds from the greeting's first loud packet to its last: the same words take longer
    when the voice is played with gaps (a server that cannot keep up pads it with silence)."""
    ended = next(
        at
        for at, item in record.data
        if item.get("messageType") == "speechText"
        and item["data"].get("role") == "persona"
        and item["data"].get("end_of_speech")
    )
    loud = [t for t in record.loud_audio_frames if t <= ended + 0.1]
    return loud[-1] - loud[0] if len(loud) > 1 else 0.0


async def events_told(base_url: str, call_id: str, last: int = 30) -> str:
    """The call's last stored events, one a line (what a failed session had got to)."""
    try:
        events = await call_events(base_url, call_id)
    except httpx.HTTPError as error:
        return f"(the call's events could not be read: {error})"
    lines = [
        f"  {event['createdAt']} {event['event']} "
        + " ".join(
            f"{key}={str(value)[:60]!r}"
            for key, value in (event.get("data") or {}).items()
            if key not in {"callId", "agent", "from", "to", "direction", "transport", "metadata"}
        )
        for event in events[-last:]
    ]
    return f"the call's last {len(lines)} events:\n" + "\n".join(lines)


async def run(base_url: str, count: int, utterances: list[str], speaking: int = 0) -> list[dict]:
    """`count` sessions at once; the first `speaking` of them talk (all when 0), the others
    only listen to their greeting and stay connected until the talkers are done."""
    async with httpx.AsyncClient(base_url=base_url) as http:
        tokens = [await mint(http) for _ in range(count)]
    talkers = speaking or count
    talked = asyncio.Event()
    tasks = [
        asyncio.ensure_future(
            session(
                base_url,
                token,
                utterances if index < talkers else [],
                with_barge_in=(index == 0),
                listen_until=talked if index >= talkers else None,
            )
        )
        for index, token in enumerate(tokens)
    ]
    talking = asyncio.ensure_future(asyncio.wait(tasks[:talkers]))
    talking.add_done_callback(lambda _: talked.set())
    await asyncio.wait(tasks)
    failures = [task.exception() for task in tasks if task.exception() is not None]
    if len(failures) == len(tasks):
        raise AssertionError(f"all {count} session(s) failed; the first: {failures[0]}")
    for failure in failures:  # reported, and left out of the figures
        print(f"a session FAILED and is left out of the figures: {str(failure)[:700]}")
    return [task.result() for task in tasks if task.exception() is None]


RECORDED_STAGES = ("vad_ms", "transcript_ms", "turn_ms", "brain_ms", "audio_ms")


def recorded_latency_attach(sessions: list[dict], data_dir: str) -> None:
    """Each answer's latency as the server recorded it (its `TurnLatency` row), read from the
    server's SQLite database (a PostgreSQL run has none here: the rows get None)."""
    path = Path(data_dir) / "parley.sqlite3"
    rows = [row for result in sessions for row in result["rows"]]
    if "DATABASE_URL" in os.environ or not path.exists():
        for row in rows:
            row["recorded"] = None
        return
    with sqlite3.connect(path) as database:
        for row in rows:
            found = database.execute(
                f"SELECT total_ms, {', '.join(RECORDED_STAGES)} FROM calls_turnlatency"
                " WHERE call_id = ? AND message_id = ?",
                (row["call_id"], row["answer_id"]),
            ).fetchone()
            row["recorded"] = dict(zip(("total_ms", *RECORDED_STAGES), found, strict=True)) if found else None


def report(count: int, sessions: list[dict], verbose: bool) -> None:
    rows = [row for result in sessions for row in result["rows"]]
    latencies = [row["voice_to_voice_ms"] for row in rows if row["voice_to_voice_ms"] is not None]

    def median_of(name: str) -> str:
        values = [row[name] for row in rows if row[name] is not None]
        return f"{statistics.median(values):.0f}" if values else "-"

    def wer(texts: list[str]) -> float:
        errors = total = 0
        for row in rows:
            if row["text"] in texts:
                e, n = word_errors(row["text"], row["heard"])
                errors, total = errors + e, total + n
        return 100.0 * errors / total if total else float("nan")

    talkers = sum(1 for result in sessions if result["rows"])
    print(
        f"\n== {count} session(s), {talkers} speaking at once, {len(rows)} utterances"
        f" ({count - len(sessions)} failed session(s) left out) =="
    )
    if verbose:
        for row in rows:
            steps = " ".join(
                f"{label} {row[key]:.0f}" if row[key] is not None else f"{label} -"
                for label, key in (
                    ("vad", "vad_stop_ms"),
                    ("final", "final_transcript_ms"),
                    ("eager", "eager_ms"),
                    ("turn", "turn_end_ms"),
                    ("sent", "first_audio_sent_ms"),
                )
            )
            recorded = row.get("recorded")
            if recorded:
                steps += f" | recorded {recorded['total_ms']} = " + "+".join(
                    "-" if recorded[name] is None else str(recorded[name]) for name in RECORDED_STAGES
                )
            print(
                f"  {row['voice_to_voice_ms'] or -1:>6.0f} ms  said {row['text']!r:40} heard {row['heard']!r:40} {steps}"
            )
    if latencies:
        print(
            f"voice-to-voice ms: median {statistics.median(latencies):.0f}, p95 {percentile(latencies, 0.95):.0f}"
            f" ({len(latencies)}/{len(rows)} answered)"
        )
    print(
        "breakdown, median ms after the end of speech: VAD end of speech "
        f"{median_of('vad_stop_ms')}, final transcript {median_of('final_transcript_ms')}, turn end "
        f"{median_of('turn_end_ms')}, first reply audio sent {median_of('first_audio_sent_ms')}"
        f" (times from when the client really sent the end of speech; it sent it "
        f"{median_of('client_send_lag_ms')} ms late, median)"
    )
    recorded_rows = [row for row in rows if row.get("recorded")]
    if recorded_rows:
        recorded = [row["recorded"]["total_ms"] for row in recorded_rows]
        medians = []
        for name in RECORDED_STAGES:
            values = [row["recorded"][name] for row in recorded_rows if row["recorded"][name] is not None]
            medians.append(f"{name.removesuffix('_ms')} {statistics.median(values):.0f}" if values else "")
        gaps = [
            row["voice_to_voice_ms"] - row["recorded"]["total_ms"]
            for row in recorded_rows
            if row["voice_to_voice_ms"] is not None
        ]
        gap = (
            f"median {statistics.median(gaps):.0f}, min {min(gaps):.0f}, max {max(gaps):.0f}" if gaps else "-"
        )
        print(
            f"recorded by the server (TurnLatency: end of speech → first audio sent), ms: median "
            f"{statistics.median(recorded):.0f}, p95 {percentile(recorded, 0.95):.0f} "
            f"({len(recorded)}/{len(rows)} answers); stages, median: {', '.join(m for m in medians if m)}; "
            f"the client's figure minus the recorded one: {gap}"
        )
    print(f"word error rate: in-domain {wer(IN_DOMAIN):.1f} %, general {wer(GENERAL):.1f} %")
    trials = [trial for result in sessions for trial in result["barge_ins"]]
    stops = [ms for _, ms in trials if ms is not None and ms != MISSED]
    missed = [text for text, ms in trials if ms == MISSED]
    if stops or missed:
        each = ", ".join(
            f"{text.split(',')[0].split()[0]} {'missed' if ms == MISSED else f'{ms:.0f}'}"
            for text, ms in trials
            if ms is not None
        )
        summary = (
            f"median {statistics.median(stops):.0f} ms, max {max(stops):.0f} ms" if stops else "none stopped"
        )
        print(f"barge-in stop time: {summary}; {len(missed)} missed ({each})")
    print(
        f"lowest audio frame rate received: {min(result['audio_fps'] for result in sessions):.1f} fps (full: 50)"
    )
    greetings = [result["greeting_seconds"] for result in sessions]
    print(
        f"greeting's voice, first to last loud packet: median {statistics.median(greetings):.2f} s, "
        f"max {max(greetings):.2f} s (longer than with one session: played with gaps)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", default="1", help="comma-separated session counts, e.g. 1,4,8,16")
    parser.add_argument(
        "--workers", type=int, default=1, help="Daphne processes, sessions spread over them (default 1)"
    )
    parser.add_argument(
        "--speaking",
        type=int,
        default=0,
        help="only this many sessions talk; the others listen (default: all)",
    )
    parser.add_argument("--no-general", action="store_true", help="in-domain sentences only")
    parser.add_argument("--limit", type=int, default=0, help="only the first N sentences (a quick run)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every utterance")
    args = parser.parse_args()
    video_decoding_disable()
    os.environ.setdefault("PARLEY_ICE_LOOPBACK_ONLY", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("PARLEY_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from calls.live import ice_address_policy_apply, ice_consent_policy_apply

    ice_address_policy_apply()
    ice_consent_policy_apply()  # a client on a loaded machine answers consent checks late too
    utterances = IN_DOMAIN + ([] if args.no_general else GENERAL)
    if args.limit:
        utterances = utterances[: args.limit]
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as data_dir:
        processes, base_url = start_server(data_dir, args.workers)
        try:
            print(f"server {base_url} ({len(processes)} Daphne process(es)); {os.cpu_count()} cores")
            for count in [int(part) for part in args.sessions.split(",")]:
                try:
                    sessions = asyncio.run(run(base_url, count, utterances, min(args.speaking, count)))
                    recorded_latency_attach(sessions, data_dir)
                except AssertionError as failure:
                    print(f"{count} session(s) FAILED: {failure}\nserver log:\n{server_log_tail(data_dir)}")
                    continue
                report(count, sessions, args.verbose)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except Exception:
                    process.kill()


if __name__ == "__main__":
    main()
