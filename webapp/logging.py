"""Logging helpers: a filter that keeps API keys, tokens and signatures out of every log line."""

from __future__ import annotations

import logging
import re

# Query parameters and header values that carry credentials.
_SECRET_QUERY = re.compile(
    r"(?i)\b(token|key|api_key|access_token|session_token|hub\.verify_token|signature)=([^&\s\"']+)"
)
# "Bearer <key>", and Deepgram's "Token <key>" (a long run only: "token expired" is prose).
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+|\b(token)\s+[A-Za-z0-9._~+/=-]{16,}")
# Parley API keys and JWTs, wherever they appear.
_API_KEY = re.compile(r"\bprl_[A-Za-z0-9]+_[A-Za-z0-9_-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """Return text with every credential-looking value replaced by a marker."""
    text = _SECRET_QUERY.sub(lambda match: f"{match.group(1)}=[redacted]", text)
    text = _BEARER.sub(lambda match: f"{match.group(1) or match.group(2)} [redacted]", text)
    text = _API_KEY.sub("[redacted-api-key]", text)
    return _JWT.sub("[redacted-jwt]", text)


class RedactSecretsFilter(logging.Filter):
    """Rewrites each record's message with secrets redacted (formatting it first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's bug; keep the record
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True


def loguru_forward(level: str) -> None:
    """Send loguru's records (pipecat logs through loguru) to `logging`, from `level` up.

    loguru's default sink writes everything from DEBUG to stderr, bypassing Django's logging
    (no redaction, no level control, a line per frame link). Records keep their module name
    as the logger name ("pipecat.pipeline.worker"), so `LOGGING` decides where they go.
    """
    from loguru import logger as loguru_logger

    def sink(message: object) -> None:
        record = message.record  # type: ignore[attr-defined]
        exception = record["exception"]
        logging.getLogger(record["name"] or "loguru").log(
            record["level"].no,
            record["message"],
            exc_info=(exception.type, exception.value, exception.traceback) if exception else None,
        )

    loguru_logger.remove()
    loguru_logger.add(sink, level=level, format="{message}")
