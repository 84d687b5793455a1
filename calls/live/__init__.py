"""Live browser calls: the package's public names, re-exported from the module of each idea.

- `registry`: the live sessions of this process (get, list, open, shut down).
- `webrtc_policy`: what Parley changes in aiortc/aioice (remote candidates, ICE addresses,
  ICE consent freshness, video bitrate).
- `microphone`: the microphone's receive path (jitter buffer, inline decoding).
- `session`: `LiveSession`, one call's real-time side (signalling, WebRTC, data channel,
  conversation listener, ending).
- `persona_config`: the persona (and a token's overrides) as a `ConversationConfig`.
- `limits`: `SessionLimits`, a session's maximum duration and idle clock (warning, timeout).

The names below that tests patch on this package (`ICE_CONSENT_*`, `get_decoder`) are bound
only here, and the modules read them from here at each use.
"""

from __future__ import annotations

from aiortc.codecs import get_decoder

from calls.live.microphone import (
    MicrophoneInlineDecoder,
    MicrophoneJitterBuffer,
    microphone_decode_inline,
    microphone_jitter_buffer_shorten,
)
from calls.live.persona_config import _build_config, persona_conversation_config
from calls.live.registry import (
    LiveSessionRefused,
    live_session_get,
    live_session_open,
    live_sessions,
    live_sessions_end,
)
from calls.live.session import LiveSession, _now_iso
from calls.live.webrtc_policy import (
    candidate_address_allowed,
    ice_address_policy_apply,
    ice_consent_policy_apply,
    video_bitrate_policy_apply,
)

# ICE consent freshness (RFC 7675): a check every ~5 s; consent expires when no check has been
# answered for 30 s. Each check is retransmitted (0.5 s, then 1 s; it fails after 3.5 s), so an
# answer that a busy event loop on either side delays still counts.
ICE_CONSENT_INTERVAL_SECONDS = 5.0
ICE_CONSENT_EXPIRY_SECONDS = 30.0
ICE_CONSENT_RETRANSMISSIONS = 2

__all__ = [
    "ICE_CONSENT_EXPIRY_SECONDS",
    "ICE_CONSENT_INTERVAL_SECONDS",
    "ICE_CONSENT_RETRANSMISSIONS",
    "LiveSession",
    "LiveSessionRefused",
    "MicrophoneInlineDecoder",
    "MicrophoneJitterBuffer",
    "_build_config",
    "_now_iso",
    "candidate_address_allowed",
    "get_decoder",
    "ice_address_policy_apply",
    "ice_consent_policy_apply",
    "live_session_get",
    "live_session_open",
    "live_sessions",
    "live_sessions_end",
    "microphone_decode_inline",
    "microphone_jitter_buffer_shorten",
    "persona_conversation_config",
    "video_bitrate_policy_apply",
]
