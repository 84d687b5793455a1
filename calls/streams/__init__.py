"""Event readers, whatever the transport: who may read, from which cursor, and a feed that never gaps.

The database is the record, a broadcast is a doorbell. `authorisation` says who reads what;
`hub` is the process's one listener per organization, which turns doorbells into events in
cursor order (reading the log only for a gap) and fans them out to every local reader;
`feed` is one reader: the replay after its cursor from the log, then live events from the hub.
"""

from calls.streams.authorisation import (
    MAX_AGENTS,
    StreamRefused,
    StreamRequest,
    astream_request_authorise,
    scope_headers,
    scope_query,
    stream_cursor_parse,
    stream_request_authorise,
)
from calls.streams.feed import EventFeed
from calls.streams.hub import StreamEvent, Subscription, stream_hubs

__all__ = [
    "MAX_AGENTS",
    "EventFeed",
    "StreamEvent",
    "StreamRefused",
    "StreamRequest",
    "Subscription",
    "astream_request_authorise",
    "scope_headers",
    "scope_query",
    "stream_cursor_parse",
    "stream_hubs",
    "stream_request_authorise",
]
