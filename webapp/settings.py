"""Parley's one settings module: everything comes from the environment, with an embedded default."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from error


def env_int_within(name: str, default: int, lowest: int, highest: int) -> int:
    value = env_int(name, default)
    if not lowest <= value <= highest:
        raise ImproperlyConfigured(f"{name} must be from {lowest} to {highest}, got {value}")
    return value


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from error


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def env_log_levels(name: str) -> dict[str, str]:
    """Per-logger levels from `logger=LEVEL,logger=LEVEL` (PARLEY_LOG_LEVELS)."""
    levels: dict[str, str] = {}
    for item in env_list(name):
        logger_name, _, level = item.partition("=")
        logger_name, level = logger_name.strip(), level.strip().upper()
        if not logger_name or level not in _LOG_LEVELS:
            raise ImproperlyConfigured(
                f"{name} takes logger=LEVEL pairs, LEVEL one of {', '.join(_LOG_LEVELS)}; got {item!r}"
            )
        levels[logger_name] = level
    return levels


DEBUG = env_bool("DJANGO_DEBUG", False)

# Where the embedded default keeps its SQLite file and generated local secrets.
PARLEY_DATA_DIR = Path(os.environ.get("PARLEY_DATA_DIR", BASE_DIR / "var"))


def _debug_secret_key() -> str:
    """A per-checkout key for development, kept in the data directory so logins survive restarts."""
    PARLEY_DATA_DIR.mkdir(parents=True, exist_ok=True)
    key_file = PARLEY_DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off (set DJANGO_DEBUG=1 for a local demo)."
        )
    SECRET_KEY = _debug_secret_key()

ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS",
    ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [],
)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "personas",
    "calls",
]

MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "webapp.middleware.InputTextMiddleware",
    "webapp.middleware.OutageMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: SQLite by default, DATABASE_URL for PostgreSQL -------------------------

DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
# PostgreSQL connections each process keeps open, and may open at most. Without a pool every
# trip to the database opened a connection, half of the 8-10 ms an event took to store
# (bench/streams.py); 4 processes at 10 each leave most of PostgreSQL's default 100 for the
# rest. 0: no pool.
PARLEY_DB_POOL_MIN = env_int("PARLEY_DB_POOL_MIN", 2)
PARLEY_DB_POOL_MAX = env_int("PARLEY_DB_POOL_MAX", 10)
# How long a thread waits for a pooled connection when all are in use before its request fails.
DATABASE_POOL_TIMEOUT_SECONDS = 10.0
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    if DATABASES["default"]["ENGINE"].endswith("postgresql") and PARLEY_DB_POOL_MAX > 0:
        # Closing a connection (each request's end, each `database_sync_to_async` call) hands it
        # back to the pool. The health check replaces one the server dropped (a restart).
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": min(PARLEY_DB_POOL_MIN, PARLEY_DB_POOL_MAX),
            "max_size": PARLEY_DB_POOL_MAX,
            "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
        }
else:
    PARLEY_DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("PARLEY_SQLITE_PATH", str(PARLEY_DATA_DIR / "parley.sqlite3")),
            "OPTIONS": {
                # Several Daphne threads write (events, transcripts): take the write lock at
                # BEGIN and wait for it instead of failing with "database is locked".
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": os.environ.get("PARLEY_SQLITE_TEST_PATH") or None},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer and cache: in-memory by default, REDIS_URL for Redis ----------------

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub layer: measured ~3,300 group sends/s at p99 ~4 ms here, against ~490/s
            # for the core layer (shared/NOTES.md). Delivery is at most once either way; the
            # event streams treat broadcasts as a doorbell and read the database.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("PARLEY_REDIS_PREFIX", "parley")},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("PARLEY_REDIS_PREFIX", "parley"),
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth, i18n, static ---------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("PARLEY_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("PARLEY_STATIC_ROOT", BASE_DIR / "staticfiles"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("PARLEY_MEDIA_ROOT", PARLEY_DATA_DIR / "media"))

# Call recordings (`calls.review.recordings`): local files under the data directory by default,
# not under MEDIA_ROOT (they are served only through the admin, to staff who may listen); an
# S3-compatible bucket through django-storages once PARLEY_RECORDINGS_S3_BUCKET is set.
PARLEY_RECORDINGS_DIR = Path(os.environ.get("PARLEY_RECORDINGS_DIR", PARLEY_DATA_DIR / "recordings"))
# Where a recording is written while its call lasts (local disk); it is stored when the call ends.
PARLEY_RECORDINGS_SCRATCH_DIR = Path(
    os.environ.get("PARLEY_RECORDINGS_SCRATCH_DIR", PARLEY_DATA_DIR / "recordings-partial")
)


def _recordings_storage() -> dict[str, Any]:
    bucket = os.environ.get("PARLEY_RECORDINGS_S3_BUCKET", "")
    if not bucket:
        return {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": PARLEY_RECORDINGS_DIR, "base_url": None},
        }
    try:
        import boto3  # noqa: F401
        import storages  # noqa: F401
    except ImportError as missing:
        raise ImproperlyConfigured(
            "PARLEY_RECORDINGS_S3_BUCKET is set: install django-storages and boto3 (README, Configuration)"
        ) from missing
    options: dict[str, Any] = {
        "bucket_name": bucket,
        "location": os.environ.get("PARLEY_RECORDINGS_S3_PREFIX", "recordings"),
        "default_acl": "private",
        "querystring_auth": True,
        "file_overwrite": False,
    }
    # Unset: boto3's own chain (AWS_ACCESS_KEY_ID..., an instance role) and AWS's endpoint.
    for option, variable in (
        ("endpoint_url", "PARLEY_RECORDINGS_S3_ENDPOINT_URL"),
        ("region_name", "PARLEY_RECORDINGS_S3_REGION"),
        ("access_key", "PARLEY_RECORDINGS_S3_ACCESS_KEY_ID"),
        ("secret_key", "PARLEY_RECORDINGS_S3_SECRET_ACCESS_KEY"),
    ):
        if os.environ.get(variable):
            options[option] = os.environ[variable]
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "recordings": _recordings_storage(),
}
# Daphne serves /static/ itself unless a reverse proxy does (then set this to 0).
PARLEY_SERVE_STATIC = env_bool("PARLEY_SERVE_STATIC", True)

# Request bodies: the API takes small JSON documents; refuse anything bigger early.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("PARLEY_MAX_BODY_BYTES", 256 * 1024)

SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("PARLEY_BEHIND_TLS_PROXY", False) else None
)
SESSION_COOKIE_SECURE = env_bool("PARLEY_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- Browser origins (CORS for /v1/, Origin check for websockets) ---------------------

PARLEY_ALLOWED_ORIGINS = env_list("PARLEY_ALLOWED_ORIGINS", [])
# In the demo (DEBUG) any localhost origin may embed Parley.
PARLEY_ALLOW_LOCALHOST_ORIGINS = env_bool("PARLEY_ALLOW_LOCALHOST_ORIGINS", DEBUG)
LOCALHOST_ORIGIN_REGEX = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"

CORS_ALLOWED_ORIGINS = PARLEY_ALLOWED_ORIGINS
CORS_ALLOWED_ORIGIN_REGEXES = [LOCALHOST_ORIGIN_REGEX] if PARLEY_ALLOW_LOCALHOST_ORIGINS else []
CORS_URLS_REGEX = r"^/(v1/|talk).*$"
CORS_ALLOW_CREDENTIALS = False
CORS_EXPOSE_HEADERS = ["Retry-After"]

# --- REST API ---------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["personas.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["personas.authentication.HasOrganization"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's JSON parser behind size, depth and text checks (webapp/inputs.py).
    "DEFAULT_PARSER_CLASSES": ["webapp.inputs.GuardedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "webapp.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["personas.authentication.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "api_key": os.environ.get("PARLEY_API_RATE", "600/min"),
        "session_token": os.environ.get("PARLEY_SESSION_TOKEN_RATE", "60/min"),
        "stream_token": os.environ.get("PARLEY_STREAM_TOKEN_RATE", "60/min"),
    },
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Parley API",
    "DESCRIPTION": (
        "Self-hosted talking AI personas. Server-to-server endpoints are authorised with "
        "`Authorization: Bearer <API key>`. See the README for the event stream and the "
        "browser session protocol. Text may not contain NUL characters (a 400 names the field)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # A call's status and /talk's status are two enums: each gets a name, not a hash.
    "ENUM_NAME_OVERRIDES": {"CallStatusEnum": "calls.models.CallStatus"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "calls.schema.schema_postprocess",  # the event stream, a Channels consumer
    ],
}

# --- Tokens and streams -----------------------------------------------------------------

# Session and stream tokens are HS256 JWTs signed with this key (derived from the secret
# key unless set, so rotating DJANGO_SECRET_KEY also invalidates every token).
PARLEY_TOKEN_SIGNING_KEY = os.environ.get("PARLEY_TOKEN_SIGNING_KEY", "")
PARLEY_SESSION_TOKEN_TTL_SECONDS = env_int("PARLEY_SESSION_TOKEN_TTL_SECONDS", 3600)
PARLEY_STREAM_TOKEN_TTL_SECONDS = env_int("PARLEY_STREAM_TOKEN_TTL_SECONDS", 600)
# SSE keepalive comment interval (the protocol says 30 s; tests shorten it).
PARLEY_SSE_PING_SECONDS = env_float("PARLEY_SSE_PING_SECONDS", 30.0)
# How often an open stream re-reads the event log even without a broadcast, so an event
# whose broadcast was dropped (channel layers deliver at most once) still arrives.
PARLEY_STREAM_POLL_SECONDS = env_float("PARLEY_STREAM_POLL_SECONDS", 5.0)
# Organizations' live-session limit when their own is not set.
PARLEY_DEFAULT_MAX_CONCURRENT_SESSIONS = env_int("PARLEY_DEFAULT_MAX_CONCURRENT_SESSIONS", 10)

# --- Browser sessions (WebRTC) ------------------------------------------------------


def _ice_servers() -> list[dict[str, object]]:
    import json

    raw = os.environ.get("PARLEY_ICE_SERVERS", "").strip()
    if not raw:
        return []
    try:
        servers = json.loads(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"PARLEY_ICE_SERVERS must be a JSON list: {error}") from error
    if not isinstance(servers, list) or not all(isinstance(s, dict) and "urls" in s for s in servers):
        raise ImproperlyConfigured('PARLEY_ICE_SERVERS must be a JSON list of {"urls": ...} objects')
    return servers


# STUN/TURN servers for browsers and for aiortc. Empty is right on a LAN or loopback; never
# aiortc's hidden default (a public STUN server that an offline machine waits on).
PARLEY_ICE_SERVERS = _ice_servers()
# The host[:port] and scheme browsers use to reach the signalling websocket and /talk; by
# default the Host and scheme of the session-start request.
PARLEY_ENGINE_HOST = os.environ.get("PARLEY_ENGINE_HOST", "").strip()
# Several Parley processes (`make run WORKERS=2`, or one per core behind a proxy): the
# host[:port] of each, as browsers reach it. Every new session goes to the one holding the
# fewest live calls, and its signalling socket, media and /talk stay there.
PARLEY_ENGINE_HOSTS = env_list("PARLEY_ENGINE_HOSTS", [PARLEY_ENGINE_HOST] if PARLEY_ENGINE_HOST else [])
PARLEY_ENGINE_PROTOCOL = os.environ.get("PARLEY_ENGINE_PROTOCOL", "").strip()
# A page served by one Parley process may call the others: their origins pass CORS and the
# websocket Origin check.
PARLEY_ENGINE_ORIGINS = [
    f"{scheme}://{host}"
    for host in PARLEY_ENGINE_HOSTS
    for scheme in ((PARLEY_ENGINE_PROTOCOL,) if PARLEY_ENGINE_PROTOCOL else ("http", "https"))
]
CORS_ALLOWED_ORIGINS = [*PARLEY_ALLOWED_ORIGINS, *PARLEY_ENGINE_ORIGINS]
PARLEY_HEARTBEAT_SECONDS = env_int("PARLEY_HEARTBEAT_SECONDS", 5)
PARLEY_WS_RECONNECT_ATTEMPTS = env_int("PARLEY_WS_RECONNECT_ATTEMPTS", 5)
# A session with no heartbeat this long ends (timeout); so does one whose socket is gone while its
# media still flows (hangup).
PARLEY_SESSION_STALE_SECONDS = env_float("PARLEY_SESSION_STALE_SECONDS", 20.0)
# How long a closed signalling socket may take to come back before the call ends as hangup, once
# the microphone has been silent as long too (the SDK retries within ~1.5 s).
PARLEY_SIGNALLING_GRACE_SECONDS = env_float("PARLEY_SIGNALLING_GRACE_SECONDS", 4.0)
# A session started (POST /v1/engine/session) whose signalling socket has not opened this long
# ends as timeout: it no longer holds one of its organization's live-session slots.
PARLEY_CONNECT_TIMEOUT_SECONDS = env_float("PARLEY_CONNECT_TIMEOUT_SECONDS", 30.0)
# On SIGTERM a server process takes no new sessions, ends its live calls (endsession to the
# browser, call.ended stored with reason failed) and exits within this many seconds.
PARLEY_DRAIN_SECONDS = env_float("PARLEY_DRAIN_SECONDS", 10.0)
# Every server process heartbeats this often (in the database) and, as it does, ends the calls
# nobody is in: never connected, or held by a process that is gone.
PARLEY_PROCESS_HEARTBEAT_SECONDS = env_float("PARLEY_PROCESS_HEARTBEAT_SECONDS", 15.0)
# A process whose heartbeat is older than this is gone: its calls end as failed. A process on the
# same machine that died (its pid is gone) is seen at once.
PARLEY_PROCESS_STALE_SECONDS = env_float("PARLEY_PROCESS_STALE_SECONDS", 45.0)
# The host[:port] browsers reach this very process at (`scripts/serve` sets it for each worker):
# while it drains, new sessions go to the others.
PARLEY_PROCESS_ENGINE_HOST = os.environ.get("PARLEY_PROCESS_ENGINE_HOST", "").strip()
# Remote ICE candidates on loopback/private/link-local addresses are refused in production
# (they let a browser aim the server's media at internal hosts); development allows them.
PARLEY_ALLOW_PRIVATE_ICE = env_bool("PARLEY_ALLOW_PRIVATE_ICE", DEBUG)
# Gather only 127.0.0.1 (tests and single-machine demos: aioice skips loopback otherwise).
PARLEY_ICE_LOOPBACK_ONLY = env_bool("PARLEY_ICE_LOOPBACK_ONLY", False)
# Listening (VAD, SmartTurn, speech recognition, barge-in) in live calls. Off: typed text only
# (the microphone is drained, no recogniser workers are started).
PARLEY_LISTENING = env_bool("PARLEY_LISTENING", True)
# The offline recogniser (Whisper): live decodes a process runs at once, and how much nicer than
# the event loop its computing threads are (calls.pipeline.listening.whisper says why 1 and 5).
PARLEY_WHISPER_DECODE_THREADS = env_int_within("PARLEY_WHISPER_DECODE_THREADS", 1, 1, 64)
PARLEY_WHISPER_NICENESS = env_int_within("PARLEY_WHISPER_NICENESS", 5, 0, 19)
# At server start, load on a background thread what calls need (pipecat, the turn model, the
# synthesizer, the recogniser's workers, the sentence encoder) and prepare the personas most
# recently called, up to PARLEY_WARM_UP_PERSONAS, so the first visitors do not wait for it.
PARLEY_WARM_UP = env_bool("PARLEY_WARM_UP", True)
PARLEY_WARM_UP_PERSONAS = env_int("PARLEY_WARM_UP_PERSONAS", 20)
# The avatar's video bitrate ceiling, bits per second (a 320x240 face looks sharp at 250 kbps).
PARLEY_VIDEO_MAX_BITRATE = env_int("PARLEY_VIDEO_MAX_BITRATE", 250_000)
# How long an LLM tool call waits for its result (the browser's for client tools, the app's
# for server tools) before the LLM is told it failed; a tool's own timeoutSeconds wins.
PARLEY_TOOL_TIMEOUT_SECONDS = env_float("PARLEY_TOOL_TIMEOUT_SECONDS", 15.0)
# Call review: a persona answer slower than this (end of speech to first audio sent, in
# milliseconds) is flagged as slow on the call's page, and its call by the list's "slow" filter.
PARLEY_SLOW_TURN_MS = env_int("PARLEY_SLOW_TURN_MS", 1500)
# In-process agent hooks (`calls.agents.parley_agent`): the modules that define them, imported
# at start-up (comma-separated dotted names), and how long one handler may run before it is
# cancelled (seconds).
PARLEY_AGENT_MODULES = env_list("PARLEY_AGENT_MODULES", [])
PARLEY_AGENT_HOOK_TIMEOUT_SECONDS = env_float("PARLEY_AGENT_HOOK_TIMEOUT_SECONDS", 30.0)

# Demo data (python manage.py seed_demo).
PARLEY_DEMO_API_KEY = os.environ.get("PARLEY_DEMO_API_KEY", "")
# The demo persona's WhatsApp channel, configured by seed_demo when the first four are set.
PARLEY_DEMO_WHATSAPP_PHONE_NUMBER_ID = os.environ.get("PARLEY_DEMO_WHATSAPP_PHONE_NUMBER_ID", "").strip()
PARLEY_DEMO_WHATSAPP_ACCESS_TOKEN = os.environ.get("PARLEY_DEMO_WHATSAPP_ACCESS_TOKEN", "").strip()
PARLEY_DEMO_WHATSAPP_APP_SECRET = os.environ.get("PARLEY_DEMO_WHATSAPP_APP_SECRET", "").strip()
PARLEY_DEMO_WHATSAPP_VERIFY_TOKEN = os.environ.get("PARLEY_DEMO_WHATSAPP_VERIFY_TOKEN", "").strip()
PARLEY_DEMO_WHATSAPP_DISPLAY_PHONE_NUMBER = os.environ.get(
    "PARLEY_DEMO_WHATSAPP_DISPLAY_PHONE_NUMBER", ""
).strip()

# --- WhatsApp (PROTOCOL §3) ---------------------------------------------------------------

# The Graph API's base URL and version in one (tests point it at a local fake).
PARLEY_WHATSAPP_GRAPH_URL = os.environ.get(
    "PARLEY_WHATSAPP_GRAPH_URL", "https://graph.facebook.com/v25.0"
).rstrip("/")
# Key material for secrets stored encrypted (WhatsApp tokens and app secrets); by default the
# secret key, so rotating DJANGO_SECRET_KEY means entering those secrets again.
PARLEY_SECRETS_KEY = os.environ.get("PARLEY_SECRETS_KEY", "")
# How long a process's claim on a stored webhook delivery lasts: a process killed while
# processing one leaves it to another after this (processing one takes milliseconds).
PARLEY_WHATSAPP_LEASE_SECONDS = env_float("PARLEY_WHATSAPP_LEASE_SECONDS", 60.0)
# How often each process looks for deliveries it was not woken for (another process's, or
# a lease that expired) and for sessions whose 24-hour window has closed.
PARLEY_WHATSAPP_POLL_SECONDS = env_float("PARLEY_WHATSAPP_POLL_SECONDS", 5.0)
# The largest media file (a voice note) downloaded from a contact, in bytes: Meta's own cap
# for audio is 16 MB.
PARLEY_WHATSAPP_MEDIA_MAX_BYTES = int(env_float("PARLEY_WHATSAPP_MEDIA_MAX_BYTES", 16 * 1024 * 1024))

# --- Logging: secrets never reach a log line --------------------------------------------

LOG_LEVEL = os.environ.get("PARLEY_LOG_LEVEL", "INFO").upper()
# pipecat logs every frame link and turn at DEBUG through loguru; Parley forwards it into
# `logging` (logger "pipecat…") from this level up.
PIPECAT_LOG_LEVEL = os.environ.get("PARLEY_PIPECAT_LOG_LEVEL", "WARNING").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "webapp.logging.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "daphne": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "pipecat": {"handlers": ["console"], "level": PIPECAT_LOG_LEVEL, "propagate": False},
        # aioice logs every candidate-pair check at INFO.
        "aioice": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
# One part's log in detail without the rest's: "calls.pipeline.turns=DEBUG,calls.agents=INFO".
for _name, _level in env_log_levels("PARLEY_LOG_LEVELS").items():
    LOGGING["loggers"][_name] = {"handlers": ["console"], "level": _level, "propagate": False}
