"""Writes for call review: the audit log of what staff did with calls."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from calls.models import Call
from calls.review.models import ReviewAction, ReviewAuditEntry


def review_audit_record(
    *,
    user: AbstractBaseUser | AnonymousUser,
    action: ReviewAction | str,
    call: Call | None = None,
    detail: dict[str, Any] | None = None,
) -> ReviewAuditEntry:
    """Record that `user` did `action` (to `call`, if it concerns one); `detail` says the rest."""
    action = ReviewAction(action)  # an unknown action is a bug where it is made
    authenticated = getattr(user, "is_authenticated", False)
    return ReviewAuditEntry.objects.create(
        user=user if authenticated else None,
        username=user.get_username() if authenticated else "",
        action=action,
        call=call,
        call_ref=call.pk if call is not None else "",
        detail=detail or {},
    )
