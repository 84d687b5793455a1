"""ASGI entry point: Django for HTTP, Channels consumers for websockets and the event stream."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# Build Django (apps, settings) before anything imports models through the routing.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

from webapp.accesslog import AccessLogMiddleware  # noqa: E402
from webapp.origins import WebsocketOriginValidator  # noqa: E402
from webapp.routing import http_consumer_routes, websocket_routes  # noqa: E402

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
