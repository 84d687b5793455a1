"""What this process depends on, checked: the database, the channel layer and the cache (Redis)."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.cache import cache
from django.db import connection

logger = logging.getLogger(__name__)

# How long each check may take before its dependency counts as down, in seconds: a load
# balancer's probe gives up after a few seconds, and a hung Redis must not hang the probe.
HEALTH_CHECK_TIMEOUT_SECONDS = 2.0
# A group nobody joins: sending to it is a round trip to the channel layer and nothing more.
HEALTH_GROUP = "parley.health"
OK = "ok"


def _down(name: str, error: BaseException) -> str:
    # The full error (with addresses) goes to the log; anonymous callers get its kind only.
    logger.warning("health: %s is down: %s", name, error)
    return f"down ({type(error).__name__})"


def _database_ping() -> None:
    pool = getattr(connection, "pool", None)  # PostgreSQL's connection pool, when it is on
    if pool is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return
    # Straight from the pool: Django's own checkout waits the pool's whole timeout (10 s) for
    # a connection when the database is down. Django opens the pool at its first checkout;
    # opening it again does nothing.
    pool.open()
    with pool.connection(timeout=HEALTH_CHECK_TIMEOUT_SECONDS) as pooled:
        pooled.execute("SELECT 1")


def database_check() -> str:
    try:
        _database_ping()
    except Exception as error:
        return _down("database", error)
    return OK


async def _channel_layer_probe() -> None:
    layer = get_channel_layer()
    if layer is not None:
        await asyncio.wait_for(
            layer.group_send(HEALTH_GROUP, {"type": "health.ping"}), HEALTH_CHECK_TIMEOUT_SECONDS
        )


def channel_layer_check() -> str:
    try:
        async_to_sync(_channel_layer_probe)()
    except Exception as error:
        return _down("channel layer", error)
    return OK


def cache_check() -> str:
    try:
        cache.get("parley:health")
    except Exception as error:
        return _down("cache", error)
    return OK


def dependency_checks() -> dict[str, str]:
    """Each dependency's state: "ok" or "down (<kind of error>)"."""
    return {"database": database_check(), "channelLayer": channel_layer_check(), "cache": cache_check()}
