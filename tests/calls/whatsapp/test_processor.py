"""The processor a server process runs on its loop: woken by the webhook, it processes at once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from channels.db import database_sync_to_async

from calls.models import WhatsAppDelivery
from calls.whatsapp import processing
from tests.calls.whatsapp.conftest import envelope, text_message


@pytest.mark.django_db(transaction=True)
async def test_a_stored_delivery_wakes_the_servers_processor(channel, post_delivery, settings):
    settings.PARLEY_WHATSAPP_POLL_SECONDS = 60  # only the webhook's wake-up can make it quick
    processing.processor_start()
    task = processing._task
    try:
        await asyncio.sleep(0.2)  # its first round, with nothing to do, then it waits
        response = await post_delivery.posted(envelope(messages=[text_message("wamid.W", "hi")]))
        assert response.status_code == 200

        def state() -> str:
            return WhatsAppDelivery.objects.get().state

        for _ in range(100):
            if await database_sync_to_async(state)() == WhatsAppDelivery.State.PROCESSED:
                break
            await asyncio.sleep(0.05)
        assert await database_sync_to_async(state)() == WhatsAppDelivery.State.PROCESSED
    finally:
        processing.processor_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
