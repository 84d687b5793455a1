"""The microphone's receive buffer: Parley listens to it, never plays it, so it holds 1 packet."""

from __future__ import annotations

from aiortc import RTCPeerConnection

from calls.live import MICROPHONE_JITTER_PACKETS, microphone_jitter_buffer_shorten


async def test_the_microphone_receiver_holds_one_packet_not_aiortcs_four():
    peer = RTCPeerConnection()
    try:
        transceiver = peer.addTransceiver("audio", direction="recvonly")
        receiver = transceiver.receiver
        assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 4  # aiortc's default, 80 ms
        microphone_jitter_buffer_shorten(peer, receiver.track)
        buffer = receiver._RTCRtpReceiver__jitter_buffer
        assert buffer._prefetch == MICROPHONE_JITTER_PACKETS == 1
        assert buffer.capacity == 16
    finally:
        await peer.close()
