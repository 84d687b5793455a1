"""The microphone's receive buffer: Parley listens to it, never plays it, so it holds nothing."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from calls.live import MicrophoneJitterBuffer, microphone_jitter_buffer_shorten


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
