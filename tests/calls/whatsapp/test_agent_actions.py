"""Apps on WhatsApp threads over the agent websocket: takeover, a human's message, answering.

Real signed deliveries, the real agent socket, the answerer, and the fake Graph API on
127.0.0.1 (`tests.calls.whatsapp.test_answering`'s fixtures).
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from calls.models import CallEvent, WhatsAppMessage, WhatsAppSession
from tests.calls.test_agents_socket import agent_socket
from tests.calls.whatsapp.conftest import CONTACT, envelope, text_message
from tests.calls.whatsapp.test_answering import answer_all, deliver, graph, thread  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def app(key_a):
    socket = await agent_socket({"Authorization": f"Bearer {key_a}"})
    yield socket
    await socket.close()


async def open_thread(post_delivery, wamid: str = "wamid.S1", text: str = "Hi") -> WhatsAppSession:
    await deliver(post_delivery, envelope(messages=[text_message(wamid, text)]))
    return await sync_to_async(thread)()


async def test_an_app_pauses_a_thread_writes_as_a_human_and_resumes(graph, post_delivery, app):  # noqa: F811
    session = await open_thread(post_delivery)
    await answer_all()
    assert len(graph.sent) == 1

    paused = await app.command("whatsappPause", sessionId=str(session.pk))
    assert paused == {"event": "ack", "requestId": "rq1", "sessionId": str(session.pk)}
    await deliver(post_delivery, envelope(messages=[text_message("wamid.S2", "A person, please")]))
    await answer_all()
    assert len(graph.sent) == 1  # recorded, not answered

    sent = await app.command("whatsappSend", contact="+" + CONTACT, text="Ana here, how can I help?")
    assert sent["event"] == "ack"
    assert sent["messageId"].startswith("parley_")
    await answer_all()
    assert graph.sent[-1].text == "Ana here, how can I help?"
    response = await sync_to_async(
        CallEvent.objects.filter(call=session.call, type="whatsapp.response").order_by("cursor").last
    )()
    assert response.data["author"] == "human"
    assert response.data["messageId"] == graph.sent[-1].wamid

    assert (await app.command("whatsappResume", contact=CONTACT))["event"] == "ack"
    await deliver(post_delivery, envelope(messages=[text_message("wamid.S3", "Do you deliver?")]))
    await answer_all()
    assert len(graph.sent) == 3


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({}, "invalid_field", "sessionId"),
        ({"sessionId": "1", "contact": "1555"}, "invalid_field", "sessionId"),
        ({"sessionId": "abc"}, "invalid_field", "sessionId"),
        ({"contact": "not a number"}, "invalid_field", "contact"),
        ({"sessionId": "999999"}, "unknown_session", "sessionId"),
        ({"contact": "15550000000"}, "unknown_session", "contact"),
    ],
)
async def test_a_takeover_action_that_names_no_thread_is_refused_clearly(app, fields, code, named):
    refused = await app.command("whatsappPause", **fields)
    assert refused["event"] == "error"
    assert refused["code"] == code
    assert refused["message"].startswith(named)


async def test_a_human_message_that_is_empty_or_too_long_is_refused_and_nothing_is_queued(
    graph,  # noqa: F811
    post_delivery,
    app,
):
    session = await open_thread(post_delivery)
    for text, problem in (("  ", "non-empty"), ("x" * 4097, "4096")):
        refused = await app.command("whatsappSend", sessionId=str(session.pk), text=text)
        assert refused["code"] == "invalid_field"
        assert problem in refused["message"]
    assert not await sync_to_async(WhatsAppMessage.objects.filter(author="human").exists)()


async def test_another_organisations_thread_is_unknown_to_an_app(graph, post_delivery, key_b):  # noqa: F811
    session = await open_thread(post_delivery)
    other = await agent_socket({"Authorization": f"Bearer {key_b}"})
    try:
        for action in ("whatsappPause", "whatsappSend"):
            refused = await other.command(action, sessionId=str(session.pk), text="hijack")
            assert refused["code"] == "unknown_session"
        refused = await other.command("reply", callId=str(session.call_id), text="hijack")
        assert refused["code"] == "unknown_call"
    finally:
        await other.close()
    session = await sync_to_async(WhatsAppSession.objects.get)(pk=session.pk)
    assert session.human_takeover is False


async def test_an_answering_app_gets_the_message_and_its_reply_is_the_only_answer(
    graph,  # noqa: F811
    post_delivery,
    app,
    persona_a,
):
    await sync_to_async(type(persona_a).objects.filter(pk=persona_a.pk).update)(
        app_answer_timeout_seconds=10.0
    )
    assert (await app.command("subscribe", agents=["mara"], answer=True))["event"] == "ack"
    await deliver(post_delivery, envelope(messages=[text_message("wamid.AA1", "Do you deliver?")]))
    answering = asyncio.ensure_future(answer_all())
    told = await app.event("whatsapp.message")
    assert told["data"]["text"] == "Do you deliver?"
    call_id = told["data"]["callId"]
    ack = await app.command("reply", callId=call_id, text="Yes, on Saturdays!", inReplyTo="wamid.AA1")
    assert ack["event"] == "ack"
    await asyncio.wait_for(answering, 15)
    assert [sent.text for sent in graph.sent] == ["Yes, on Saturdays!"]
    assert graph.sent[0].body["context"] == {"message_id": "wamid.AA1"}
    response = await app.event("whatsapp.response")
    assert response["data"]["author"] == "app"

    refused = await app.command("reply", callId=call_id, text="x", inReplyTo="wamid.NOPE")
    assert refused["code"] == "unknown_message"
    assert (await app.command("cancel", callId=call_id))["code"] == "not_supported"


async def test_a_streamed_reply_is_sent_whole_and_hangup_ends_the_thread(graph, post_delivery, app):  # noqa: F811
    session = await open_thread(post_delivery, text="Do you deliver?")
    call_id = str(session.call_id)
    assert (await app.command("replyStream", callId=call_id, messageId="m1", op="start"))["event"] == "ack"
    for piece in ("Yes, ", "on Saturdays", "."):
        assert (await app.command("replyStream", callId=call_id, messageId="m1", op="chunk", text=piece))[
            "event"
        ] == "ack"
    assert (await app.command("replyStream", callId=call_id, messageId="m1", op="end"))["event"] == "ack"
    refused = await app.command("replyStream", callId=call_id, messageId="m1", op="chunk", text="late")
    assert refused["code"] == "unknown_stream"
    await answer_all()
    assert [sent.text for sent in graph.sent] == ["Yes, on Saturdays."]

    assert (await app.command("hangup", callId=call_id))["event"] == "ack"
    session = await sync_to_async(WhatsAppSession.objects.select_related("call").get)(pk=session.pk)
    assert session.ended_at is not None
    assert session.call.end_reason == "hangup"
    assert (await app.command("reply", callId=call_id, text="hello?"))["code"] == "call_ended"


async def test_a_reply_may_name_a_real_wamid_which_is_base64(graph, post_delivery, app):  # noqa: F811
    wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTdCNTg5RjY1MEMyRjlGMjRGNgA="
    session = await open_thread(post_delivery, wamid=wamid, text="Do you deliver?")
    ack = await app.command("reply", callId=str(session.call_id), text="We do!", inReplyTo=wamid)
    assert ack["event"] == "ack", ack
    await answer_all()
    assert graph.sent[0].body["context"] == {"message_id": wamid}


async def test_hooks_take_over_their_own_personas_threads_only(graph, post_delivery, make_persona, org_a):  # noqa: F811
    from calls.agents.hooks import AgentError, hooks_clear, parley_agent

    session = await open_thread(post_delivery)
    await sync_to_async(make_persona)(org_a, "otto")
    try:
        mara, otto = parley_agent("mara"), parley_agent("otto")
        assert await mara.whatsapp_pause(contact=CONTACT) == str(session.pk)
        assert await mara.whatsapp_send("Ana here.", session_id=session.pk) == str(session.pk)
        with pytest.raises(AgentError) as refused:
            await otto.whatsapp_resume(session_id=session.pk)
        assert refused.value.code == "unknown_session"
        with pytest.raises(AgentError) as refused:
            await mara.whatsapp_send("", session_id=session.pk)
        assert refused.value.code == "invalid_field"
    finally:
        hooks_clear()
    await answer_all()
    assert graph.sent[-1].text == "Ana here."
    session = await sync_to_async(WhatsAppSession.objects.get)(pk=session.pk)
    assert session.human_takeover is True


async def test_an_in_process_hook_gets_whatsapp_events_and_its_reply_is_the_only_answer(
    graph,  # noqa: F811
    post_delivery,
    persona_a,
):
    from calls.agents import parley_agent
    from calls.agents.hooks import hooks_clear

    await sync_to_async(type(persona_a).objects.filter(pk=persona_a.pk).update)(
        app_answer_timeout_seconds=10.0
    )
    told: list[str] = []
    agent = parley_agent("mara", answer=True)

    @agent.on("whatsapp.session_started")
    async def started(event, call):
        told.append(event["event"])

    @agent.on("whatsapp.message")
    async def message(event, call):
        told.append(event["event"])
        await call.reply(f"You asked: {event['text']}", in_reply_to=event["messageId"])

    try:
        await deliver(post_delivery, envelope(messages=[text_message("wamid.HK1", "Do you deliver?")]))
        await asyncio.wait_for(answer_all(), 15)
    finally:
        hooks_clear()
    assert told == ["whatsapp.session_started", "whatsapp.message"]
    assert [sent.text for sent in graph.sent] == ["You asked: Do you deliver?"]
    assert graph.sent[0].body["context"] == {"message_id": "wamid.HK1"}
    response = await sync_to_async(
        lambda: CallEvent.objects.filter(type="whatsapp.response").values_list("data", flat=True).get()
    )()
    assert response["author"] == "app"
