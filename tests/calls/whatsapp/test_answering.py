"""The persona answers WhatsApp threads: signed deliveries in, replies out through a fake Graph API.

Every test posts real signed webhook deliveries, processes them as a server process does, and
lets the answerer claim and answer the threads against `tests.fakes.graph_api.FakeGraphAPI` on
127.0.0.1. Nothing is mocked between the webhook and the Graph API's socket.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from calls.agents import presence
from calls.models import CallEvent, Message, WhatsAppMessage, WhatsAppSession
from calls.whatsapp import answering, outbox
from calls.whatsapp.processing import whatsapp_processing_round
from tests.calls.whatsapp.conftest import ACCESS_TOKEN, CONTACT, envelope, status, text_message
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.sounds import ogg_opus
from tests.fakes.spoken import spoken_pcm, with_room

pytestmark = pytest.mark.django_db(transaction=True)

RECIPIENT = "+" + CONTACT


@pytest.fixture
async def graph(settings, channel):
    async with FakeGraphAPI(access_token=ACCESS_TOKEN) as fake:
        settings.PARLEY_WHATSAPP_GRAPH_URL = fake.base_url
        yield fake


async def deliver(post_delivery, payload) -> None:
    response = await post_delivery.posted(payload)
    assert response.status_code == 200
    await sync_to_async(whatsapp_processing_round)()


async def answer_all() -> None:
    """What the answerer does when woken: claim the threads owed work, answer them to the end."""
    for _ in range(10):
        tasks = await answering.answerer_round()
        if not tasks:
            return
        await asyncio.gather(*tasks)


def types_of(session: WhatsAppSession) -> list[str]:
    return list(CallEvent.objects.filter(call=session.call).order_by("cursor").values_list("type", flat=True))


def thread() -> WhatsAppSession:
    return WhatsAppSession.objects.select_related("call").get(contact_phone=CONTACT)


def outbound() -> list[WhatsAppMessage]:
    return list(WhatsAppMessage.objects.filter(direction="outbound").order_by("id"))


async def test_a_text_is_marked_read_with_typing_then_answered_once_by_the_brain(graph, post_delivery):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.A1", "Do you deliver?")]))
    await answer_all()

    assert len(graph.sent) == 1
    reply = graph.sent[0]
    assert reply.to == RECIPIENT
    assert reply.text
    assert reply.body["context"] == {"message_id": "wamid.A1"}
    assert reply.body["biz_opaque_callback_data"].startswith("parley_")
    # Read with the typing indicator, before the reply.
    assert graph.reads == [
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.A1",
            "typing_indicator": {"type": "text"},
        }
    ]
    kinds = [
        (request.body or {}).get("type") or (request.body or {}).get("status") for request in graph.requests
    ]
    assert kinds == ["read", "text"]

    session = await sync_to_async(thread)()
    sent = (await sync_to_async(outbound)())[0]
    assert sent.meta_message_id == reply.wamid
    assert sent.status == WhatsAppMessage.Status.SENT
    assert sent.author == "persona"
    assert await sync_to_async(types_of)(session) == [
        "call.started",
        "whatsapp.session_started",
        "whatsapp.message",
        "whatsapp.response",
    ]
    lines = await sync_to_async(list)(
        Message.objects.filter(call=session.call).order_by("id").values_list("role", "text")
    )
    assert lines == [("user", "Do you deliver?"), ("persona", reply.text)]

    # Nothing more is owed: another round sends nothing, and Meta's statuses move it on.
    await answer_all()
    assert len(graph.sent) == 1
    await deliver(
        post_delivery, envelope(statuses=[status(reply.wamid, "read"), status(reply.wamid, "sent")])
    )
    sent = await sync_to_async(WhatsAppMessage.objects.get)(pk=sent.pk)
    assert sent.status == WhatsAppMessage.Status.READ
    assert sent.sent_at is not None


async def test_several_messages_get_one_combined_reply(graph, post_delivery):
    await deliver(
        post_delivery,
        envelope(
            messages=[
                text_message("wamid.B1", "Hello!"),
                text_message("wamid.B2", "Do you deliver?"),
                text_message("wamid.B3", "On Saturdays?"),
            ]
        ),
    )
    await answer_all()
    assert len(graph.sent) == 1
    assert graph.sent[0].body["context"] == {"message_id": "wamid.B3"}
    owed = await sync_to_async(WhatsAppMessage.objects.filter(needs_answer=True).count)()
    assert owed == 0


async def test_a_voice_note_is_transcribed_told_with_its_transcript_and_answered(graph, post_delivery):
    speech = with_room(await spoken_pcm("Do you deliver on Saturday?"), lead_seconds=0.4, tail_seconds=0.4)
    audio = ogg_opus(speech)
    graph.media_add("MEDIA42", audio, "audio/ogg; codecs=opus")
    voice = {
        "from": CONTACT,
        "id": "wamid.V1",
        "timestamp": str(int(time.time())),
        "type": "audio",
        "audio": {"id": "MEDIA42", "mime_type": "audio/ogg; codecs=opus", "voice": True},
    }
    await deliver(post_delivery, envelope(messages=[voice]))
    # Not told before it is transcribed: a voice note's `text` is its transcript.
    session = await sync_to_async(thread)()
    assert "whatsapp.message" not in await sync_to_async(types_of)(session)

    await answer_all()
    message = await sync_to_async(WhatsAppMessage.objects.get)(meta_message_id="wamid.V1")
    assert "deliver" in message.text.lower(), message.text
    # Its audio is kept (Meta's copy expires), through the storage API, for staff to listen to.
    assert message.media_file.name.endswith(".ogg")
    with message.media_file.open("rb") as kept:
        assert kept.read() == audio
    told = await sync_to_async(CallEvent.objects.get)(call=session.call, type="whatsapp.message")
    assert told.data["text"] == message.text
    assert told.data["type"] == "audio"
    assert len(graph.sent) == 1
    assert graph.sent[0].body["context"] == {"message_id": "wamid.V1"}
    # Read (with typing) while it is heard, once; then the download; the reply last.
    assert [request.path.split("/")[-1] for request in graph.requests] == [
        "messages",
        "MEDIA42",
        "MEDIA42",
        "messages",
    ]
    assert len(graph.reads) == 1


async def test_a_voice_note_over_the_size_limit_is_not_downloaded_and_gets_a_helpful_answer(
    graph, post_delivery, settings
):
    settings.PARLEY_WHATSAPP_MEDIA_MAX_BYTES = 1000
    graph.media_add("BIG", b"\0" * 5000, "audio/ogg; codecs=opus")
    voice = {
        "from": CONTACT,
        "id": "wamid.V2",
        "timestamp": str(int(time.time())),
        "type": "audio",
        "audio": {"id": "BIG", "mime_type": "audio/ogg; codecs=opus", "voice": True},
    }
    await deliver(post_delivery, envelope(messages=[voice]))
    await answer_all()
    message = await sync_to_async(WhatsAppMessage.objects.get)(meta_message_id="wamid.V2")
    assert message.text == ""
    assert "too long" in message.metadata["transcriptError"]
    assert graph.media_bytes_sent.get("BIG", 0) < 5000
    assert [sent.text for sent in graph.sent] == [answering.VOICE_NOTE_TOO_LONG]


async def test_a_photo_without_a_caption_is_answered_sensibly_and_a_reaction_not_at_all(graph, post_delivery):
    photo = {
        "from": CONTACT,
        "id": "wamid.P1",
        "timestamp": str(int(time.time())),
        "type": "image",
        "image": {"id": "IMG1", "mime_type": "image/jpeg", "sha256": "x"},
    }
    reaction = {
        "from": CONTACT,
        "id": "wamid.R1",
        "timestamp": str(int(time.time())),
        "type": "reaction",
        "reaction": {"message_id": "wamid.P1", "emoji": "👍"},
    }
    await deliver(post_delivery, envelope(messages=[photo]))
    await answer_all()
    assert [sent.text for sent in graph.sent] == [answering.MEDIA_NOT_READ.format(noun="picture")]
    await deliver(post_delivery, envelope(messages=[reaction]))
    await answer_all()
    assert len(graph.sent) == 1


async def test_outside_the_window_the_reply_fails_with_metas_reason_and_is_not_retried(graph, post_delivery):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.W1", "Do you deliver?")]))
    graph.fail_next(1, code=131047, only="send")
    await answer_all()
    assert graph.sent == []
    failed = (await sync_to_async(outbound)())[0]
    assert failed.status == WhatsAppMessage.Status.FAILED
    assert failed.error_code == 131047
    assert "24 hours" in failed.error
    sends = [request for request in graph.requests if (request.body or {}).get("type") == "text"]
    assert len(sends) == 1
    # A later round sends nothing more.
    await answer_all()
    assert graph.sent == []
    session = await sync_to_async(thread)()
    assert (await sync_to_async(types_of)(session))[-1] == "whatsapp.status"


async def test_a_rate_limit_is_waited_out_and_the_reply_sent_once(graph, post_delivery, monkeypatch):
    monkeypatch.setattr("calls.whatsapp.graph.RETRY_BASE_DELAY_SECONDS", 0.01)
    await deliver(post_delivery, envelope(messages=[text_message("wamid.L1", "Do you deliver?")]))
    graph.fail_next(1, code=130429, only="send")
    await answer_all()
    assert len(graph.sent) == 1
    sends = [request for request in graph.requests if (request.body or {}).get("type") == "text"]
    assert len(sends) == 2  # refused once, then accepted
    assert (await sync_to_async(outbound)())[0].status == WhatsAppMessage.Status.SENT


async def test_a_long_rate_limit_holds_the_reply_for_later_and_it_is_sent_then(graph, post_delivery):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.L2", "Do you deliver?")]))
    graph.fail_next(1, code=130429, retry_after=3600, only="send")
    await answer_all()
    held = (await sync_to_async(outbound)())[0]
    assert held.status == WhatsAppMessage.Status.PENDING
    assert held.next_attempt_at > timezone.now() + timedelta(minutes=59)
    assert graph.sent == []
    # When its time comes, it is sent (once).
    await sync_to_async(WhatsAppMessage.objects.filter(pk=held.pk).update)(next_attempt_at=timezone.now())
    await answer_all()
    assert len(graph.sent) == 1


async def test_a_process_killed_before_answering_leaves_the_answer_to_another(graph, post_delivery):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.K1", "Do you deliver?")]))
    # A process claimed the thread and was killed: its claim expires.
    session = await sync_to_async(thread)()
    await sync_to_async(WhatsAppSession.objects.filter(pk=session.pk).update)(
        answer_owner="dead-host:1:x", answer_until=timezone.now() + timedelta(seconds=30)
    )
    await answer_all()
    assert graph.sent == []  # its lease still holds
    await sync_to_async(WhatsAppSession.objects.filter(pk=session.pk).update)(
        answer_until=timezone.now() - timedelta(seconds=1)
    )
    await answer_all()
    assert len(graph.sent) == 1


async def test_a_send_cut_short_by_a_killed_process_is_never_sent_twice_and_its_status_still_lands(
    graph, post_delivery
):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.K2", "Do you deliver?")]))
    session = await sync_to_async(thread)()
    # The killed process had queued the reply and started its send; Meta may have it.
    queued = await sync_to_async(outbox.whatsapp_reply_queue)(
        session=session, text="Yes, on Saturdays.", author="persona"
    )
    await sync_to_async(WhatsAppMessage.objects.filter(pk=queued.pk).update)(send_started_at=timezone.now())
    await sync_to_async(WhatsAppSession.objects.filter(pk=session.pk).update)(
        answer_owner="dead-host:1:x", answer_until=timezone.now() - timedelta(seconds=1)
    )
    await answer_all()
    assert graph.sent == []
    failed = await sync_to_async(WhatsAppMessage.objects.get)(pk=queued.pk)
    assert failed.status == WhatsAppMessage.Status.FAILED
    assert "not sent again" in failed.error
    # Meta had it after all: its status carries the placeholder as callback data.
    await deliver(
        post_delivery,
        envelope(
            statuses=[status("wamid.OUT9", "delivered", biz_opaque_callback_data=queued.meta_message_id)]
        ),
    )
    found = await sync_to_async(WhatsAppMessage.objects.get)(pk=queued.pk)
    assert found.meta_message_id == "wamid.OUT9"
    assert found.status == WhatsAppMessage.Status.DELIVERED
    assert found.error == ""


async def test_a_human_takes_over_writes_and_hands_back(graph, post_delivery):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.H1", "Hi")]))
    await answer_all()
    assert len(graph.sent) == 1
    session = await sync_to_async(thread)()

    assert await sync_to_async(outbox.whatsapp_takeover_set)(session=session, paused=True)
    await deliver(post_delivery, envelope(messages=[text_message("wamid.H2", "Can I talk to a person?")]))
    await answer_all()
    assert len(graph.sent) == 1  # nobody answers automatically
    assert await sync_to_async(WhatsAppMessage.objects.filter(meta_message_id="wamid.H2").exists)()

    await sync_to_async(outbox.whatsapp_human_send)(session=session, text="Hi, this is Ana from the bakery.")
    await answer_all()
    assert graph.sent[-1].text == "Hi, this is Ana from the bakery."
    response = await sync_to_async(
        CallEvent.objects.filter(call=session.call, type="whatsapp.response").order_by("cursor").last
    )()
    assert response.data["author"] == "human"

    assert await sync_to_async(outbox.whatsapp_takeover_set)(session=session, paused=False)
    await deliver(post_delivery, envelope(messages=[text_message("wamid.H3", "Do you deliver?")]))
    await answer_all()
    assert len(graph.sent) == 3
    assert graph.sent[-1].body["context"] == {"message_id": "wamid.H3"}


async def test_an_answering_app_replies_and_the_brain_stays_silent(graph, post_delivery, persona_a):
    await presence.answerer_enter(organization_id=persona_a.organization_id, agents=["mara"], app_id="app1")
    await sync_to_async(type(persona_a).objects.filter(pk=persona_a.pk).update)(
        app_answer_timeout_seconds=5.0
    )
    await deliver(post_delivery, envelope(messages=[text_message("wamid.AP1", "Do you deliver?")]))
    answering_task = asyncio.ensure_future(answer_all())
    await asyncio.sleep(0.5)
    session = await sync_to_async(thread)()
    await sync_to_async(outbox.whatsapp_reply_queue)(session=session, text="From the app: yes!", author="app")
    await asyncio.wait_for(answering_task, 10)
    assert [sent.text for sent in graph.sent] == ["From the app: yes!"]


async def test_when_the_answering_app_is_silent_the_brain_answers_after_its_time(
    graph, post_delivery, persona_a
):
    await presence.answerer_enter(organization_id=persona_a.organization_id, agents=["mara"], app_id="app2")
    await sync_to_async(type(persona_a).objects.filter(pk=persona_a.pk).update)(
        app_answer_timeout_seconds=0.5
    )
    await deliver(post_delivery, envelope(messages=[text_message("wamid.AP2", "Do you deliver?")]))
    started = time.monotonic()
    await answer_all()
    assert time.monotonic() - started >= 0.5
    assert len(graph.sent) == 1
    assert (await sync_to_async(outbound)())[0].author == "persona"


# --- The persona's LLM on WhatsApp: the thread as history, tools answered by an app ------------

ORDER_TOOL = {
    "type": "server",
    "name": "check_order",
    "description": "The status of a customer's order, from the shop's system.",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
}


@pytest.fixture
async def llm_persona(persona_a):
    from tests.fakes.openai_server import FakeOpenAIServer

    async with FakeOpenAIServer() as llm:
        await sync_to_async(type(persona_a).objects.filter(pk=persona_a.pk).update)(
            brain_provider="openai",
            llm_base_url=llm.base_url,
            llm_model="fake-model",
            llm_api_key="sk-test-whatsapp",
            tools=[ORDER_TOOL],
        )
        yield llm


async def test_the_llm_answers_in_writing_with_the_thread_as_history(graph, post_delivery, llm_persona):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.M1", "Hello there")]))
    await answer_all()
    await deliver(post_delivery, envelope(messages=[text_message("wamid.M2", "And tomorrow?")]))
    await answer_all()
    assert [sent.text for sent in graph.sent] == ["OK.", "OK."]
    second = llm_persona.requests[-1].messages
    assert second[0]["role"] == "system"
    assert "WhatsApp" in second[0]["content"]
    assert [(line["role"], line["content"]) for line in second[1:]] == [
        ("user", "Hello there"),
        ("assistant", "OK."),
        ("user", "And tomorrow?"),
    ]
    assert llm_persona.requests[-1].body["tools"][0]["function"]["name"] == "check_order"


async def test_a_server_tool_is_answered_by_an_app_and_the_llm_goes_on(graph, post_delivery, llm_persona):
    from calls.whatsapp.tools import whatsapp_tool_result

    await deliver(post_delivery, envelope(messages=[text_message("wamid.T1", "check_order order=42")]))
    answering_task = asyncio.ensure_future(answer_all())
    session = await sync_to_async(thread)()
    announced = None
    for _ in range(100):
        announced = await sync_to_async(
            CallEvent.objects.filter(call=session.call, type="llm.tool_call").first
        )()
        if announced is not None:
            break
        await asyncio.sleep(0.05)
    assert announced is not None
    asked = announced.data["toolCalls"][0]
    assert asked["name"] == "check_order"
    assert '"42"' in asked["arguments"]
    await whatsapp_tool_result(
        call_id=str(session.call_id),
        msg_id=announced.data["msgId"],
        results=[{"tool_call_id": asked["id"], "result": "baked, out for delivery", "error": None}],
    )
    await asyncio.wait_for(answering_task, 10)
    assert len(graph.sent) == 1
    assert "baked, out for delivery" in graph.sent[0].text
    # A second result for the same call is refused: it is not waiting any more.
    from calls.whatsapp.tools import ToolResultRefused

    with pytest.raises(ToolResultRefused):
        await whatsapp_tool_result(
            call_id=str(session.call_id),
            msg_id=announced.data["msgId"],
            results=[{"tool_call_id": asked["id"], "result": "again", "error": None}],
        )


async def test_a_server_tool_nobody_answers_times_out_and_the_contact_still_gets_an_answer(
    graph, post_delivery, llm_persona, settings
):
    settings.PARLEY_TOOL_TIMEOUT_SECONDS = 0.3
    await deliver(post_delivery, envelope(messages=[text_message("wamid.T2", "check_order order=7")]))
    await answer_all()
    assert len(graph.sent) == 1
    assert "failed" in graph.sent[0].text  # the fake LLM's sentence for an {"error": ...} result
    tool_message = llm_persona.requests[-1].messages[-1]
    assert tool_message["role"] == "tool"
    assert "no handler" in tool_message["content"]


async def test_when_the_llm_is_down_the_built_in_brain_answers(graph, post_delivery, persona_a):
    await sync_to_async(type(persona_a).objects.filter(pk=persona_a.pk).update)(
        brain_provider="openai", llm_base_url="http://127.0.0.1:9/v1", llm_api_key="sk-x"
    )
    await deliver(post_delivery, envelope(messages=[text_message("wamid.D1", "What do you do?")]))
    await answer_all()
    assert len(graph.sent) == 1
    assert graph.sent[0].text


async def test_a_reply_quotes_the_newest_message_it_answers_not_one_that_came_after(graph, post_delivery):
    await deliver(post_delivery, envelope(messages=[text_message("wamid.Q1", "Do you deliver?")]))
    first = await sync_to_async(WhatsAppMessage.objects.get)(meta_message_id="wamid.Q1")
    # The contact writes again while the persona's answer to the first is being written.
    await deliver(post_delivery, envelope(messages=[text_message("wamid.Q2", "On Sundays too?")]))
    session = await sync_to_async(thread)()
    queued = await sync_to_async(outbox.whatsapp_reply_queue)(
        session=session,
        text="Yes, Tuesday to Saturday.",
        author="persona",
        answering=[first.pk],
        only_if_owed=True,
    )
    assert queued is not None
    assert await sync_to_async(lambda: queued.reply_to.meta_message_id)() == "wamid.Q1"
    await answer_all()
    assert [sent.body["context"]["message_id"] for sent in graph.sent] == ["wamid.Q1", "wamid.Q2"]
