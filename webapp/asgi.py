"""ASGI entry point: Django for HTTP, Channels consumers for websockets and the event stream."""

from __future__ import annotations

import gc
import os
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class OneHopASGIHandler(ASGIHandler):
    """Django over ASGI, with each request's middleware and view run in one thread hop.

    Django's own handler runs its synchronous middleware (all of ours) in async mode: every
    `process_request` and `process_response` is a separate hop to a thread and back to the
    event loop, ~20 per request here. Each hop waits for the loop's next turn, and with live
    calls on the loop that made a 40 ms session start take 0.5 s (measured with
    `bench/webrtc_sessions.py --workers 2`). Here the middleware chain is built synchronous and
    called once in the request's thread, as under WSGI; the request's own thread (Django's
    `ThreadSensitiveContext`) still keeps requests apart from each other.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        self._middleware_chain: Any = sync_to_async(self._middleware_chain, thread_sensitive=True)


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# Build Django (apps, settings) before anything imports models through the routing.
django.setup(set_prefix=False)
django_asgi_app = OneHopASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import get_resolver, re_path  # noqa: E402

from webapp.accesslog import AccessLogMiddleware  # noqa: E402
from webapp.origins import WebsocketOriginValidator  # noqa: E402
from webapp.routing import http_consumer_routes, websocket_routes  # noqa: E402
from webapp.server import daphne_limits_answer  # noqa: E402

# Before Daphne builds its server: oversized messages and header lines get an answer.
daphne_limits_answer()

from calls.lifecycle.drain import install_under_daphne  # noqa: E402

# Under Daphne: register this process, heartbeat, end abandoned calls, drain on SIGTERM.
install_under_daphne()

if settings.PARLEY_WARM_UP:
    from calls.warmup import warm_up_in_background

    warm_up_in_background()

django_http = ASGIStaticFilesHandler(django_asgi_app) if settings.PARLEY_SERVE_STATIC else django_asgi_app

application = AccessLogMiddleware(
    ProtocolTypeRouter(
        {
            # Long-lived HTTP (the SSE stream) is a Channels consumer; the rest is Django.
            "http": URLRouter([*http_consumer_routes(), re_path(r"", django_http)]),
            "websocket": WebsocketOriginValidator(URLRouter(websocket_routes())),
        }
    )
)

# Load the URLconf and the views it names now rather than on the first request (about half of
# the modules), then freeze what is loaded: it lives as long as the process, and out of the
# collector's sight a full collection walks only what came later. Walking it all paused the
# event loop 60-130 ms at a time with 200 open event streams (bench/streams.py). The warm-up
# freezes its models too.
get_resolver().url_patterns  # noqa: B018
gc.freeze()
