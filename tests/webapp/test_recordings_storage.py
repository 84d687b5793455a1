"""Where call recordings are stored: local files by default, an S3-compatible bucket by configuration."""

from __future__ import annotations

import sys
import types

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp import settings as parley_settings


def test_recordings_are_local_files_by_default(monkeypatch) -> None:
    monkeypatch.delenv("PARLEY_RECORDINGS_S3_BUCKET", raising=False)
    storage = parley_settings._recordings_storage()
    assert storage["BACKEND"] == "django.core.files.storage.FileSystemStorage"
    assert storage["OPTIONS"] == {"location": parley_settings.PARLEY_RECORDINGS_DIR, "base_url": None}


def test_a_bucket_stores_them_through_django_storages_s3(monkeypatch) -> None:
    for name in ("boto3", "storages"):  # stand-ins: only their presence is checked here
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setenv("PARLEY_RECORDINGS_S3_BUCKET", "calls")
    monkeypatch.setenv("PARLEY_RECORDINGS_S3_ENDPOINT_URL", "https://minio.example.com")
    monkeypatch.delenv("PARLEY_RECORDINGS_S3_ACCESS_KEY_ID", raising=False)
    storage = parley_settings._recordings_storage()
    assert storage["BACKEND"] == "storages.backends.s3.S3Storage"
    assert storage["OPTIONS"] == {
        "bucket_name": "calls",
        "location": "recordings",
        "default_acl": "private",
        "querystring_auth": True,
        "file_overwrite": False,
        "endpoint_url": "https://minio.example.com",
    }


def test_a_bucket_without_django_storages_installed_is_refused_with_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # an import of it fails
    monkeypatch.setenv("PARLEY_RECORDINGS_S3_BUCKET", "calls")
    with pytest.raises(ImproperlyConfigured, match="install django-storages and boto3"):
        parley_settings._recordings_storage()
