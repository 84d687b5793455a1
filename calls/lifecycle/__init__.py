"""The life of the Parley processes that hold calls, and of the calls they leave behind.

- `models.EngineProcess`: one row per running server process, with its heartbeat.
- `services`: register and heartbeat this process, claim a call for it, end the calls nobody
  is in any more (never connected: `timeout`; their process died: `failed`).
- `housekeeper`: the thread that does the above periodically in every server process.
- `drain`: SIGTERM under Daphne: stop taking sessions, end live calls cleanly, exit in time.
"""
