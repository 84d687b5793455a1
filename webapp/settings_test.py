"""Settings for the test suite: the real settings, with fast hashing and short stream timers."""

import os
import tempfile

os.environ.setdefault("DJANGO_SECRET_KEY", "parley-test-suite-secret-key-not-for-production")
os.environ.setdefault("PARLEY_SSE_PING_SECONDS", "0.5")
os.environ.setdefault("PARLEY_STREAM_POLL_SECONDS", "1.0")
# The test process loads models when a test needs them; server processes started by the
# browser tests turn it on (tests/browser/conftest.py).
os.environ.setdefault("PARLEY_WARM_UP", "0")
# Recordings made by the test process and by its server processes (which inherit this
# environment) go to one temporary directory, not the checkout's var/.
os.environ.setdefault(
    "PARLEY_RECORDINGS_DIR", os.path.join(tempfile.gettempdir(), f"parley-test-recordings-{os.getpid()}")
)
# Calls being recorded too: a running `make run` purges the checkout's scratch files it does not know.
os.environ.setdefault(
    "PARLEY_RECORDINGS_SCRATCH_DIR", os.path.join(os.environ["PARLEY_RECORDINGS_DIR"], "partial")
)

from webapp.settings import *  # noqa: F403
from webapp.settings import DATABASES, PARLEY_DATA_DIR

ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1", "[::1]"]
PARLEY_ALLOW_LOCALHOST_ORIGINS = True
CORS_ALLOWED_ORIGIN_REGEXES = [r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"]
PARLEY_ALLOW_PRIVATE_ICE = True
PARLEY_ICE_LOOPBACK_ONLY = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory: browser tests run a real server process against the same database.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("PARLEY_SQLITE_TEST_PATH") or str(PARLEY_DATA_DIR / "test.sqlite3")
    }
