"""WebRTC policies Parley applies to aiortc and aioice: remote candidates, ICE addresses and consent, video bitrate."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

from django.conf import settings

from calls import live

logger = logging.getLogger(__name__)


def candidate_address_allowed(address: str) -> bool:
    """Refuse remote candidates aimed at this host's private side, unless configured otherwise."""
    if settings.PARLEY_ALLOW_PRIVATE_ICE:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        # mDNS names (x.local) cannot be resolved here anyway; anything else is refused.
        return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def ice_address_policy_apply() -> None:
    """With PARLEY_ICE_LOOPBACK_ONLY, gather only 127.0.0.1.

    aioice never offers loopback addresses, so a server and a browser on one machine with no
    network (tests, an offline demo) would have no candidate pair. Workaround for aioice's
    fixed host-address list; it can go when aioice lets callers choose interfaces.
    """
    if settings.PARLEY_ICE_LOOPBACK_ONLY:
        import aioice.ice

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


async def _ice_consent_query(connection: Any) -> None:
    """Replaces `aioice.ice.Connection.query_consent` (see `ice_consent_policy_apply`)."""
    # The ICE_CONSENT_* constants live in `calls.live` and are read there at each use, so that
    # tests can shorten them on the package.
    import random

    from aioice import stun

    assert connection.remote_password is not None  # checks start once connect() has it
    answered_at = time.monotonic()
    while True:
        await asyncio.sleep(live.ICE_CONSENT_INTERVAL_SECONDS * (0.8 + 0.4 * random.random()))
        for pair in list(connection._nominated.values()):
            request = connection.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=connection.remote_password.encode("utf8"),
                    retransmissions=live.ICE_CONSENT_RETRANSMISSIONS,
                )
            except stun.TransactionError:
                continue
            answered_at = time.monotonic()
        if time.monotonic() - answered_at > live.ICE_CONSENT_EXPIRY_SECONDS:
            logger.info(
                "ICE consent expired: no answer to a consent check for %.0f s",
                time.monotonic() - answered_at,
            )
            connection._query_consent_task = None
            await connection.close()
            return


def ice_consent_policy_apply() -> None:
    """ICE consent as RFC 7675 has it: it expires 30 s after the last answered check.

    aioice (0.13) sends each consent check once and counts it failed unless answered within
    0.5 s; six failures in a row close the connection. With 16 sessions on this 2-core machine
    the event loops on both ends lag 0.5-1.3 s at times, answers arrived late over and over,
    and calls that were playing fine were closed ("Consent to send expired", streams at 0 fps in
    `bench/webrtc_sessions.py`). Process-wide, like `ice_address_policy_apply`; it relies on
    aioice's private `_nominated`, `build_request` and `_query_consent_task` (pinned version).
    """
    import aioice.ice

    if getattr(aioice.ice.Connection.query_consent, "_parley_consent", False):
        return

    async def query_consent(self: Any) -> None:
        await _ice_consent_query(self)

    query_consent._parley_consent = True  # type: ignore[attr-defined]
    aioice.ice.Connection.query_consent = query_consent


def video_bitrate_policy_apply() -> None:
    """Bound the avatar's VP8 bitrate to PARLEY_VIDEO_MAX_BITRATE (bits per second).

    aiortc starts every VP8 stream at 500 kbps and lets the receiver's estimate raise it to
    1.5 Mbps; a 320x240 face needs far less, and every extra RTP packet is Python work on the
    event loop (encryption, send) that all sessions of the process share. aiortc reads these
    module constants when it creates an encoder and when it applies a receiver estimate.
    """
    from aiortc.codecs import vpx

    ceiling = settings.PARLEY_VIDEO_MAX_BITRATE
    vpx.MAX_BITRATE = ceiling
    vpx.DEFAULT_BITRATE = min(vpx.DEFAULT_BITRATE, ceiling)
    vpx.MIN_BITRATE = min(vpx.MIN_BITRATE, ceiling)
