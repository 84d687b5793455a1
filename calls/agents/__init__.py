"""The agent API (PROTOCOL §4): apps answer, speak, use tools and hang up.

- `commands`: the wire's commands, parsed and checked (or refused with a code).
- `control`: one live call as apps drive it (`CallControl`, owned by the `LiveSession`).
- `routing`: a command to the process that holds its call, and the answer back.
- `presence`: which apps answer which personas' turns (the brain waits for them).
- `consumers`: the `/ws/agent/` websocket.
- `hooks`: in-process hooks (`parley_agent`) with the same verbs.
"""

from calls.agents.hooks import AgentError, parley_agent

__all__ = ["AgentError", "parley_agent"]
