"""The webhook's intake: deliveries stored in batches, on a thread of their own, off the loop.

A webhook POST waits only for its delivery's commit (Meta retries anything that is not a 200,
so the 200 must mean stored). Storing each POST in its own request thread, through Django's
middleware, cost ~3 ms of CPU a request: under a burst of 1,000 (20 in flight) the answer's
median was 56 ms with processing turned off and 89-141 ms with it on, on 2 cores
(`bench/whatsapp.py`). Here the POSTs that arrive while a batch is being stored wait for the
next one, and each batch is one transaction: one commit for many deliveries, one thread that
keeps its connection, and no thread started per request.

The state is not tied to one event loop: each waiting POST carries its own future, settled on
its own loop, so tests (one loop per call) and Daphne (one loop) use the same path.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.db import DatabaseError, connection, transaction

from calls.whatsapp.processing import intake_busy, intake_idle, processor_wake
from calls.whatsapp.services import whatsapp_delivery_store

logger = logging.getLogger(__name__)

# A batch's size bound: a long transaction would hold SQLite's write lock from the processor.
MAX_BATCH_DELIVERIES = 200


@dataclass
class _Waiting:
    body: bytes
    signature: str
    future: asyncio.Future[int]


_lock = threading.Lock()
_waiting: list[_Waiting] = []
_storing = False  # a thread is storing batches (it takes what waits before it stops)
_executor: ThreadPoolExecutor | None = None


async def delivery_intake_store(*, body: bytes, signature: str) -> int:
    """Store a webhook delivery as received; its id once committed. Raises DatabaseError when
    it could not be stored (the caller answers 503 and Meta sends it again)."""
    global _storing, _executor
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    with _lock:
        _waiting.append(_Waiting(body=body, signature=signature, future=future))
        start = not _storing
        _storing = True
        intake_busy()
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-whatsapp-intake")
        executor = _executor
    if start:
        executor.submit(_store_until_none_waits)
    # Shielded: a client that goes away still has its delivery stored (and answered to nobody).
    return await asyncio.shield(future)


def _store_until_none_waits() -> None:
    global _storing
    try:
        while True:
            with _lock:
                batch = _waiting[:MAX_BATCH_DELIVERIES]
                del _waiting[:MAX_BATCH_DELIVERIES]
                if not batch:
                    _storing = False
                    intake_idle()
                    return
            _batch_store(batch)
    except BaseException:  # never leave POSTs waiting on a thread that stopped
        with _lock:
            _storing = False
            intake_idle()
            stranded, _waiting[:] = list(_waiting), []
        for each in stranded:
            _settle(each.future, DatabaseError("the webhook's intake stopped"))
        raise


def _batch_store(batch: list[_Waiting]) -> None:
    outcomes: list[int | BaseException]
    try:
        with transaction.atomic():
            outcomes = [
                whatsapp_delivery_store(body=each.body, signature=each.signature).pk for each in batch
            ]
    except DatabaseError as error:
        logger.exception("whatsapp webhook: storing %d deliveries failed", len(batch))
        outcomes = [error] * len(batch)
        connection.close()  # a broken connection is not kept; the next batch opens another
    else:
        processor_wake()
    finally:
        _connection_tidy()
    for each, outcome in zip(batch, outcomes, strict=True):
        _settle(each.future, outcome)


def _connection_tidy() -> None:
    """Hand the connection back to PostgreSQL's pool after each batch; keep SQLite's open
    (opening one costs ~2 ms, more than storing a batch)."""
    if connection.vendor != "sqlite":
        connection.close()


def _settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
    loop = future.get_loop()
    if loop.is_closed():
        return

    def settle() -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop closed meanwhile
        pass
