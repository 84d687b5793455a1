"""In-process hooks as a project would write them, loaded in the tests through PARLEY_AGENT_MODULES."""

from __future__ import annotations

from typing import Any

from calls.agents import parley_agent

agent = parley_agent("mara", answer=True)


@agent.on("user.message")
async def answer(event: dict[str, Any], call: Any) -> None:
    await call.reply("Fresh from the oven.", in_reply_to=event["messageId"])
