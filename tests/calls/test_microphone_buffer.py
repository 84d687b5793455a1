"""The microphone's receive buffer: Parley listens to it, never plays it, so it holds nothing."""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from calls import live
from calls.live import (
    MicrophoneInlineDecoder,
    MicrophoneJitterBuffer,
    microphone_decode_inline,
    microphone_jitter_buffer_shorten,
)


def opus_packet(sequence_number: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=sequence_number, timestamp=960 * sequence_number)
    packet._data = bytes([sequence_number % 256]) * 40  # depayloaded, as the receiver sets it
    return packet


async def test_the_microphone_receiver_gets_parleys_buffer_instead_of_aiortcs_four_packets():
    peer = RTCPeerConnection()
    try:
        transceiver = peer.addTransceiver("audio", direction="recvonly")
        receiver = transceiver.receiver
        assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 4  # aiortc's default, 80 ms
        microphone_jitter_buffer_shorten(peer, receiver.track)
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, MicrophoneJitterBuffer)
    finally:
        await peer.close()


def test_each_packet_is_handed_on_as_it_arrives():
    buffer = MicrophoneJitterBuffer(capacity=16)
    for number in (65534, 65535, 0, 1):  # across the sequence number's wrap
        pli, frame = buffer.add(opus_packet(number))
        assert not pli and frame is not None
        assert frame.data == opus_packet(number)._data and frame.timestamp == 960 * number


def test_a_late_packet_is_dropped_and_a_lost_one_skipped():
    buffer = MicrophoneJitterBuffer(capacity=16)
    assert buffer.add(opus_packet(10))[1] is not None
    assert buffer.add(opus_packet(12))[1] is not None  # 11 was lost: 12 is not held for it
    assert buffer.add(opus_packet(11))[1] is None  # 11 arrives after 12: too late
    assert buffer.add(opus_packet(12))[1] is None  # a duplicate
    assert buffer.add(opus_packet(13))[1] is not None


class _Tone(MediaStreamTrack):
    """A microphone playing a 440 Hz tone, 20 ms a frame, in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0.02)
        samples = np.arange(self._pts, self._pts + 960)
        tone = (np.sin(2 * np.pi * 440 * samples / 48_000) * 12_000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, self._pts, Fraction(1, 48_000)
        self._pts += 960
        return frame


async def test_the_microphone_is_decoded_on_the_loop_and_its_track_ends_with_the_call(monkeypatch):
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    decoded_on: set[int] = set()
    make_decoder = live.get_decoder

    def counting_decoder(codec):
        decoder = make_decoder(codec)
        decode = decoder.decode
        decoder.decode = lambda encoded: decoded_on.add(threading.get_ident()) or decode(encoded)
        return decoder

    monkeypatch.setattr(live, "get_decoder", counting_decoder)
    browser = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    parley = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    arrived: asyncio.Future = asyncio.get_running_loop().create_future()

    @parley.on("track")
    def on_track(track):
        microphone_jitter_buffer_shorten(parley, track)
        microphone_decode_inline(parley, track)
        arrived.set_result(track)

    try:
        browser.addTrack(_Tone())
        await browser.setLocalDescription(await browser.createOffer())
        await parley.setRemoteDescription(browser.localDescription)
        await parley.setLocalDescription(await parley.createAnswer())
        await browser.setRemoteDescription(parley.localDescription)
        track = await asyncio.wait_for(arrived, 5)
        frames = [await asyncio.wait_for(track.recv(), 5) for _ in range(15)]
        receiver = parley.getReceivers()[0]
        assert isinstance(receiver._RTCRtpReceiver__decoder_queue, MicrophoneInlineDecoder)
        assert decoded_on == {threading.get_ident()}  # every packet, on the loop's thread
        assert max(int(np.abs(frame.to_ndarray()).max()) for frame in frames[5:]) > 3000  # the tone
    finally:
        await browser.close()
        await parley.close()
    with pytest.raises(MediaStreamError):  # the call is over: the microphone track ends
        for _ in range(100):
            await asyncio.wait_for(track.recv(), 5)
