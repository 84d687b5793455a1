"""Several workers (threads standing for Daphne processes) on one database: each delivery once."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from calls.models import CallEvent, WhatsAppDelivery, WhatsAppMessage, WhatsAppSession
from calls.whatsapp.processing import whatsapp_processing_round
from tests.calls.whatsapp.conftest import envelope, text_message


@pytest.mark.django_db(transaction=True)
def test_workers_processing_at_once_process_every_delivery_once(channel, post_delivery):
    # Redelivered batches too: the same message ids arrive in several deliveries.
    for index in range(30):
        post_delivery(
            envelope(
                messages=[text_message(f"wamid.{index}", "hi"), text_message(f"wamid.{index // 3}", "hi")]
            )
        )
    counts: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            total = 0
            while True:
                done = whatsapp_processing_round(worker=name)
                total += done
                if not done and not WhatsAppDelivery.objects.filter(state="pending").exists():
                    break
            counts[name] = total
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(f"worker-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sum(counts.values()) == 30
    assert WhatsAppDelivery.objects.filter(state="processed").count() == 30
    # Each message recorded once. (Replies may be queued meanwhile by an answerer left running
    # in this process by a server-process test: only the contact's messages are counted.)
    assert WhatsAppMessage.objects.filter(direction="inbound").count() == 30
    assert CallEvent.objects.filter(type="whatsapp.message").count() == 30
    assert WhatsAppSession.objects.count() == 1
    assert CallEvent.objects.filter(type="whatsapp.session_started").count() == 1
