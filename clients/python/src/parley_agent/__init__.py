"""Parley's Python client for apps in another process: answer a persona's turns with your own LLM,
answer its tools, speak and end calls, over the agent websocket (PROTOCOL §4)."""

from parley_agent.agent import Agent, Handler
from parley_agent.call import Call, ReplyStream
from parley_agent.errors import AgentError

__all__ = ["Agent", "AgentError", "Call", "Handler", "ReplyStream"]
__version__ = "0.1.0"
