"""`manage.py seed_demo`: the demo organization, persona Mara, an API key and an admin login (idempotent).

With `PARLEY_DEMO_WHATSAPP_*` set, also Mara's WhatsApp channel.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from personas.models import ApiKey, KnowledgeEntry, Organization, Persona
from personas.services import MIN_API_KEY_LENGTH, api_key_create, api_key_hash

DEMO_ORGANIZATION_SLUG = "demo"
DEMO_ORGANIZATION_NAME = "Parley demo"
DEMO_PERSONA_SLUG = "mara"
DEMO_API_KEY_NAME = "Demo key (seed_demo)"
API_KEY_FILE_NAME = "demo-api-key"
ADMIN_PASSWORD_FILE_NAME = "admin-password"
DEFAULT_ADMIN_USERNAME = "admin"
# The channel's fields that seed_demo sets from PARLEY_DEMO_WHATSAPP_<NAME>.
WHATSAPP_SETTINGS = ("phone_number_id", "access_token", "app_secret", "verify_token")

BUSINESS = "Linden Street Bakery & Café"

MARA = {
    "name": "Mara",
    "description": f"Front desk of {BUSINESS}, a neighbourhood bakery-café.",
    "language_code": "en-US",
    "voice": "en-us+f3",
    "greeting": (
        "Hi, I'm Mara at Linden Street Bakery and Café. I can help with opening hours, "
        "the menu, cake orders or delivery. What can I do for you?"
    ),
    "system_prompt": (
        f"You are Mara, the friendly front-desk assistant of {BUSINESS}, a small neighbourhood "
        "bakery-café at 42 Linden Street, Millbrook. You answer customers' questions by voice, so "
        "keep every answer to one to three short sentences and never use lists, markdown or emoji. "
        "Use only the facts you have been given about the bakery; never invent prices, times or "
        "ingredients. If you do not know something, say so and offer the phone number, "
        "(555) 014-2210, or to pass a message to the team. For allergies, always add that the "
        "kitchen handles nuts, gluten, eggs and milk, so nothing is guaranteed free of them. "
        "Be warm and plain-spoken, like a good neighbour behind the counter."
    ),
    # The menu's names, for the offline recogniser: "latte" was heard as "loyalty" (from the
    # knowledge's "Do you have a loyalty card?"). A short list: longer ones (these and quiche,
    # cinnamon roll, macarons) taught tiny.en to glue general speech's words together
    # (bench/recognition.py --dev: general 8.5 % → 10.6 %); this one left it at 8.6 %.
    "stt_phrases": "Espresso, flat white, latte, cardamom bun, almond croissant, sourdough loaf.",
    # The demo records its calls so that a first `make run` shows a call's recording in the
    # admin; a real persona records only once its owner turns it on (visitors' consent).
    "recording_enabled": True,
    "recording_retention_days": 7,
}

# (question, answer): concrete enough that a caller can act on every answer.
MARA_KNOWLEDGE: list[tuple[str, str]] = [
    (
        "What are your opening hours?",
        "We're open Tuesday to Friday from 7 am to 6 pm, Saturday from 8 am to 5 pm and Sunday "
        "from 8 am to 2 pm. We're closed on Mondays. Hot lunch is served until 3 pm.",
    ),
    (
        "Where are you? What is the address?",
        "We're at 42 Linden Street, Millbrook, on the corner of Mill Lane, right next to the public "
        "library. The number 7 bus stops at Linden Street, two minutes away.",
    ),
    (
        "What is on the menu? What do you recommend?",
        "Our sourdough country loaf and the cardamom buns are the favourites. We also bake almond "
        "croissants, cinnamon rolls, a quiche of the day, a seasonal fruit tart, and a soup of the "
        "day with bread at lunch. Coffee is from Northside Roasters.",
    ),
    (
        "How much do things cost?",
        "An espresso is $3.20, a flat white or latte $4.20, a cardamom bun $3.80, an almond "
        "croissant $4.50, a sourdough loaf $7.50, the quiche of the day $8.50, and soup with bread "
        "$9.50. Oat or almond milk is 50 cents extra.",
    ),
    (
        "Do you have allergen information? Is anything gluten-free, vegan or nut-free?",
        "Each item has an allergen card at the counter and there's a full allergen folder on "
        "request. The flourless chocolate cake and the almond macarons are made without gluten; "
        "the sourdough loaf and the banana bread are vegan. Our kitchen handles nuts, gluten, eggs "
        "and milk, so we can't guarantee anything is free of them.",
    ),
    (
        "Can I order a cake for a birthday or celebration?",
        "Yes. Celebration cakes need 48 hours' notice. A 6-inch cake serves 8 and costs $38, an "
        "8-inch cake serves 14 and costs $55. Flavours are chocolate, lemon and elderflower, carrot, "
        "or Victoria sponge, and a message on top is free. Order in the shop or by phone with a 50% "
        "deposit.",
    ),
    (
        "Do you deliver?",
        "We deliver within 5 kilometres of the shop, Tuesday to Saturday between 10 am and 3 pm. "
        "Delivery costs $5 and is free on orders over $60. Order by 9 am for same-day delivery. "
        "Celebration cakes can be delivered too.",
    ),
    (
        "Is there parking?",
        "There are two short-stay spaces behind the shop, reached from Mill Lane. The public car "
        "park on Mill Lane is 100 metres away and the first hour is free. There's a bike rack by "
        "the front door.",
    ),
    (
        "Do you have wifi?",
        "Yes, free wifi. The network is LindenGuest and the password is cardamom42; it's also "
        "printed on your receipt.",
    ),
    (
        "How can I pay?",
        "We take cash, all major debit and credit cards, contactless, Apple Pay and Google Pay. "
        "There's no minimum card spend. We don't accept cheques.",
    ),
    (
        "Do you have a loyalty card?",
        "Yes, a paper stamp card, no app needed: one stamp for every hot drink, and the tenth drink "
        "is free. Show it in your birthday month for a free cardamom bun.",
    ),
    (
        "How can I contact you?",
        "Call us on (555) 014-2210 during opening hours, or email hello@lindenstreetbakery.example; "
        "we answer emails within a day. For cake orders, phoning is quickest.",
    ),
    (
        "Is the café accessible? Can I bring my dog?",
        "The entrance is step-free and we have an accessible toilet and high chairs. Dogs are "
        "welcome on the terrace, and there's a water bowl by the door.",
    ),
]


@dataclass
class SeedResult:
    created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    api_key: str = ""
    api_key_source: str = ""
    admin_username: str = ""
    admin_password: str | None = None
    admin_password_source: str = ""


def write_secret(path: Path, value: str) -> None:
    """Write a local secret readable by its owner only (0600, also when the file already existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    path.chmod(0o600)


def read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(settings.BASE_DIR))
    except ValueError:
        return str(path)


class Command(BaseCommand):
    help = "Create the demo organization, persona Mara, an API key and an admin login; safe to re-run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print nothing unless something goes wrong.")

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = Path(settings.PARLEY_DATA_DIR)
        result = SeedResult()
        with transaction.atomic():
            organization = self.seed_organization(result)
            persona = self.seed_persona(organization, result)
            self.seed_knowledge(persona, result)
            self.seed_api_key(organization, data_dir, result)
            self.seed_admin(data_dir, result)
            self.seed_whatsapp(persona, result)
        if not options["quiet"]:
            self.print_summary(persona, result)

    # --- the pieces -----------------------------------------------------------------------

    def seed_organization(self, result: SeedResult) -> Organization:
        organization, created = Organization.objects.get_or_create(
            slug=DEMO_ORGANIZATION_SLUG, defaults={"name": DEMO_ORGANIZATION_NAME}
        )
        if created:
            result.created.append("organization")
        return organization

    def seed_persona(self, organization: Organization, result: SeedResult) -> Persona:
        # Only created, never overwritten: edits made in the admin survive a re-run.
        persona, created = Persona.objects.get_or_create(
            slug=DEMO_PERSONA_SLUG, defaults={"organization": organization, **MARA}
        )
        if created:
            result.created.append("persona")
        elif persona.organization_id != organization.pk:
            result.notes.append(
                f"persona '{DEMO_PERSONA_SLUG}' already exists in organization "
                f"'{persona.organization.slug}'; left it there"
            )
        return persona

    def seed_knowledge(self, persona: Persona, result: SeedResult) -> None:
        known = set(persona.knowledge.values_list("question", flat=True))
        missing = [
            KnowledgeEntry(persona=persona, question=question, answer=answer, position=position)
            for position, (question, answer) in enumerate(MARA_KNOWLEDGE, start=1)
            if question not in known
        ]
        if missing:
            KnowledgeEntry.objects.bulk_create(missing)
            result.created.append(f"{len(missing)} knowledge entries")

    def seed_api_key(self, organization: Organization, data_dir: Path, result: SeedResult) -> None:
        fixed_key = (getattr(settings, "PARLEY_DEMO_API_KEY", "") or "").strip()
        if fixed_key:
            self.ensure_fixed_api_key(organization, fixed_key, result)
            return
        key_file = data_dir / API_KEY_FILE_NAME
        saved_key = read_secret(key_file)
        if saved_key:
            # A plain lookup, not api_key_authenticate: re-running must not touch last_used_at.
            still_active = ApiKey.objects.filter(
                key_hash=api_key_hash(saved_key), organization=organization, revoked_at__isnull=True
            ).exists()
            if still_active:
                result.api_key = saved_key
                result.api_key_source = f"saved in {display_path(key_file)}"
                return
            result.notes.append(f"the key in {display_path(key_file)} is revoked or gone; issued a new one")
        issued = api_key_create(organization=organization, name=DEMO_API_KEY_NAME)
        write_secret(key_file, issued.raw_key)
        result.created.append("API key")
        result.api_key = issued.raw_key
        result.api_key_source = f"saved in {display_path(key_file)}"

    def ensure_fixed_api_key(self, organization: Organization, raw_key: str, result: SeedResult) -> None:
        if len(raw_key) < MIN_API_KEY_LENGTH:
            raise CommandError(f"PARLEY_DEMO_API_KEY must be at least {MIN_API_KEY_LENGTH} characters long")
        result.api_key = raw_key
        result.api_key_source = "from PARLEY_DEMO_API_KEY"
        existing = ApiKey.objects.filter(key_hash=api_key_hash(raw_key)).first()
        if existing is None:
            api_key_create(organization=organization, name=DEMO_API_KEY_NAME, raw_key=raw_key)
            result.created.append("API key")
            return
        if existing.organization_id != organization.pk:
            raise CommandError("PARLEY_DEMO_API_KEY is already a key of another organization")
        if existing.revoked_at is not None:
            # The setting says this key is the demo's key, so it must work.
            existing.revoked_at = None
            existing.save(update_fields=["revoked_at"])
            result.notes.append("PARLEY_DEMO_API_KEY was revoked; reactivated it")

    def seed_admin(self, data_dir: Path, result: SeedResult) -> None:
        user_model = get_user_model()
        username = os.environ.get("PARLEY_ADMIN_USERNAME", "").strip() or DEFAULT_ADMIN_USERNAME
        email = os.environ.get("PARLEY_ADMIN_EMAIL", "").strip()
        password_from_env = os.environ.get("PARLEY_ADMIN_PASSWORD", "")
        password_file = data_dir / ADMIN_PASSWORD_FILE_NAME
        result.admin_username = username

        user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            password = password_from_env or secrets.token_urlsafe(12)
            user_model.objects.create_superuser(username, email, password)
            result.created.append("admin user")
            if password_from_env:
                result.admin_password_source = "from PARLEY_ADMIN_PASSWORD"
            else:
                write_secret(password_file, password)
                result.admin_password = password
                result.admin_password_source = f"saved in {display_path(password_file)}"
            return

        changed: list[str] = []
        if not (user.is_superuser and user.is_staff and user.is_active):
            user.is_superuser = user.is_staff = user.is_active = True
            changed.extend(["is_superuser", "is_staff", "is_active"])
        if email and user.email != email:
            user.email = email
            changed.append("email")
        if password_from_env:
            result.admin_password_source = "from PARLEY_ADMIN_PASSWORD"
            if not user.check_password(password_from_env):
                user.set_password(password_from_env)
                changed.append("password")
        else:
            saved_password = read_secret(password_file)
            if saved_password and user.check_password(saved_password):
                result.admin_password = saved_password
                result.admin_password_source = f"saved in {display_path(password_file)}"
            else:
                # Someone chose this account's password; it is theirs to keep.
                result.admin_password_source = "unchanged (set by you)"
        if changed:
            user.save(update_fields=sorted(set(changed)))
            result.notes.append(f"admin user '{username}': updated {', '.join(sorted(set(changed)))}")

    def seed_whatsapp(self, persona: Persona, result: SeedResult) -> None:
        """The demo persona's WhatsApp channel, from the PARLEY_DEMO_WHATSAPP_* settings (all four)."""
        from calls.models import WhatsAppChannel

        values = {
            name: getattr(settings, f"PARLEY_DEMO_WHATSAPP_{name.upper()}", "") for name in WHATSAPP_SETTINGS
        }
        if not any(values.values()):
            return
        missing = [f"PARLEY_DEMO_WHATSAPP_{name.upper()}" for name, value in values.items() if not value]
        if missing:
            result.notes.append(f"WhatsApp channel not configured: {', '.join(missing)} not set")
            return
        taken = WhatsAppChannel.objects.filter(phone_number_id=values["phone_number_id"]).exclude(
            persona=persona
        )
        if taken.exists():
            raise CommandError(
                "PARLEY_DEMO_WHATSAPP_PHONE_NUMBER_ID is already another persona's WhatsApp channel"
            )
        display = settings.PARLEY_DEMO_WHATSAPP_DISPLAY_PHONE_NUMBER
        channel = WhatsAppChannel.objects.filter(persona=persona).first() or WhatsAppChannel(persona=persona)
        created = channel.pk is None
        if not created and all(getattr(channel, name) == value for name, value in values.items()):
            if not display or channel.display_phone_number == display:
                return
        for name, value in values.items():
            setattr(channel, name, value)
        if display:
            channel.display_phone_number = display
        channel.enabled = True
        channel.save()
        if created:
            result.created.append("WhatsApp channel")
        else:
            result.notes.append("WhatsApp channel: updated from PARLEY_DEMO_WHATSAPP_*")

    # --- output -----------------------------------------------------------------------------

    def print_summary(self, persona: Persona, result: SeedResult) -> None:
        if result.created:
            self.stdout.write(self.style.SUCCESS(f"Demo data: created {', '.join(result.created)}."))
        elif result.notes:
            self.stdout.write("Demo data: already there.")
        else:
            self.stdout.write("Demo data: already there, nothing changed.")
        for note in result.notes:
            self.stdout.write(self.style.WARNING(f"Note: {note}."))
        password = result.admin_password if result.admin_password is not None else "(not shown)"
        self.stdout.write(
            f"  Persona:  {persona.name}  (slug {persona.slug}; GET /v1/personas/{persona.slug})"
        )
        self.stdout.write(f"  API key:  {result.api_key}  ({result.api_key_source})")
        self.stdout.write(
            f"  Admin:    /admin/  user {result.admin_username}, password {password}  "
            f"({result.admin_password_source})"
        )
