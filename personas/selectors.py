"""Reads for personas."""

from __future__ import annotations

from django.db.models import QuerySet

from personas.models import Persona


def _is_id(reference: str) -> bool:
    # ASCII only: str.isdigit() is also true of '²', which int() refuses.
    return reference.isascii() and reference.isdigit()


def persona_list(*, organization_id: int) -> QuerySet[Persona]:
    return Persona.objects.filter(organization_id=organization_id).prefetch_related("knowledge")


def persona_find(*, organization_id: int, reference: str) -> Persona | None:
    """A persona of this organization by slug (or numeric id)."""
    queryset = Persona.objects.filter(organization_id=organization_id)
    if _is_id(reference):
        return queryset.filter(pk=int(reference)).first()
    return queryset.filter(slug=reference).first()


def persona_exists_elsewhere(*, organization_id: int, reference: str) -> bool:
    """True if the reference names a persona of another organization (answer 403, not 404)."""
    queryset = Persona.objects.exclude(organization_id=organization_id)
    if _is_id(reference):
        return queryset.filter(pk=int(reference)).exists()
    return queryset.filter(slug=reference).exists()
