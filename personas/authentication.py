"""DRF authentication by `Authorization: Bearer <API key>`, scoped to the key's organization."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from personas.models import ApiKey, Organization
from personas.services import api_key_authenticate


@dataclass(frozen=True)
class OrganizationPrincipal:
    """Who is calling: an organization, through one of its API keys (DRF's request.user)."""

    organization: Organization
    api_key: ApiKey

    is_authenticated = True
    is_anonymous = False

    @property
    def organization_id(self) -> int:
        return self.organization.pk


def bearer_value(request: Request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <API key>'")
    return value.strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[OrganizationPrincipal, ApiKey] | None:
        raw_key = bearer_value(request)
        if raw_key is None:
            return None
        api_key = api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("API key is invalid or revoked")
        return OrganizationPrincipal(organization=api_key.organization, api_key=api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="parley"'


class HasOrganization(permissions.BasePermission):
    message = "an API key is required: send 'Authorization: Bearer <API key>'"

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, OrganizationPrincipal)


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Rate limit per API key; the scope comes from the view's `throttle_scope`."""

    scope = "api_key"

    def __init__(self) -> None:  # the scope is read per view, before the rate
        pass

    def allow_request(self, request: Request, view: object) -> bool:
        self.scope = getattr(view, "throttle_scope", "api_key")
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_rate(self) -> str | None:
        # Read at request time (not import time) so a settings change takes effect.
        from rest_framework.settings import api_settings

        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Request, view: object) -> str | None:
        if not isinstance(request.user, OrganizationPrincipal):
            return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
        return self.cache_format % {"scope": self.scope, "ident": f"key{request.user.api_key.pk}"}
