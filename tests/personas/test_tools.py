"""A persona's LLM tools: what is accepted, what is refused (naming the field), and the admin form."""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import model_to_dict

from personas.tools import tools_normalize, tools_problems

WEATHER = {
    "type": "client",
    "name": "get_weather",
    "description": "The weather in a city, from the visitor's browser.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
    },
}
ORDER = {
    "type": "server",
    "name": "lookup-order",
    "description": "Look up a cake order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    "timeoutSeconds": 8,
}


def test_client_and_server_tools_with_json_schema_parameters_are_accepted():
    assert tools_problems([WEATHER, ORDER]) == []
    assert tools_problems([]) == []


def test_a_tool_without_parameters_gets_an_empty_object_schema():
    (tool,) = tools_normalize([{"type": "server", "name": "ping", "description": " Are you there? "}])
    assert tool["parameters"] == {"type": "object", "properties": {}, "required": []}
    assert tool["description"] == "Are you there?"


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ({"name": "x"}, "must be a list of tools"),
        (["get_weather"], "tools[0]: must be an object"),
        ([{**WEATHER, "type": "webhook"}], "tools[0].type: must be 'client' or 'server'"),
        ([{**WEATHER, "name": "get weather"}], "tools[0].name: 1 to 64 letters"),
        ([{**WEATHER, "name": "x" * 65}], "tools[0].name: 1 to 64 letters"),
        ([WEATHER, {**ORDER, "name": "get_weather"}], "tools[1].name: 'get_weather' is used by another tool"),
        ([{**WEATHER, "description": "  "}], "tools[0].description: must say what the tool does"),
        ([{"type": "client", "name": "a"}], "tools[0]: missing description"),
        ([{**WEATHER, "url": "https://x"}], "tools[0]: unknown key(s) url"),
        ([{**WEATHER, "parameters": "city"}], "tools[0].parameters: must be a JSON schema object"),
        (
            [{**WEATHER, "parameters": {"type": "object", "properties": {"city": {"type": "strin"}}}}],
            "tools[0].parameters.properties.city.type: not a valid JSON schema",
        ),
        (
            [{**WEATHER, "parameters": {"type": "object", "required": "city"}}],
            "tools[0].parameters.required: not a valid JSON schema",
        ),
        ([{**WEATHER, "parameters": {"type": "string"}}], "tools[0].parameters.type: must be 'object'"),
        (
            [{**WEATHER, "parameters": {"type": "object", "properties": {}, "required": ["city"]}}],
            "tools[0].parameters.required: city not among the properties",
        ),
        (
            [{**WEATHER, "parameters": {"type": "object", "properties": {}, "anyOf": []}}],
            "tools[0].parameters",
        ),
        ([{**ORDER, "timeoutSeconds": 0}], "tools[0].timeoutSeconds: a number of seconds from 1 to 120"),
        ([{**ORDER, "timeoutSeconds": True}], "tools[0].timeoutSeconds"),
        ([WEATHER] * 33, "at most 32 tools"),
    ],
)
def test_bad_tools_are_refused_with_a_message_naming_the_field(tools, expected):
    problems = tools_problems(tools)
    assert any(problem.startswith(expected) for problem in problems), problems


@pytest.mark.django_db
def test_the_model_refuses_bad_tools_under_the_tools_field_and_normalises_good_ones(persona_a):
    persona_a.tools = [{**WEATHER, "type": "browser"}]
    with pytest.raises(ValidationError) as refused:
        persona_a.full_clean()
    assert set(refused.value.message_dict) == {"tools"}
    assert "tools[0].type" in refused.value.message_dict["tools"][0]

    persona_a.tools = [{"type": "server", "name": "ping", "description": "Ping."}]
    persona_a.full_clean()
    assert persona_a.tools[0]["parameters"]["type"] == "object"

    persona_a.tools = None  # an emptied field
    persona_a.full_clean()
    assert persona_a.tools == []


def admin_form(persona, admin_user, rf, tools_text: str):
    request = rf.post("/")
    request.user = admin_user
    form_class = admin.site._registry[type(persona)].get_form(request, persona, change=True)
    data = {key: value for key, value in model_to_dict(persona).items() if value is not None}
    data.pop("avatar_portrait", None)
    data.update(llm_api_key="", avatar_look=json.dumps(persona.avatar_look), tools=tools_text)
    return form_class(data=data, instance=persona)


@pytest.mark.django_db
def test_the_admin_form_shows_tool_problems_on_the_tools_field(admin_user, rf, persona_a):
    form = admin_form(persona_a, admin_user, rf, json.dumps([{**WEATHER, "name": "get weather"}]))
    assert not form.is_valid()
    assert list(form.errors) == ["tools"]
    assert "tools[0].name" in form.errors["tools"][0]

    form = admin_form(persona_a, admin_user, rf, "[{not json")
    assert not form.is_valid() and list(form.errors) == ["tools"]


@pytest.mark.django_db
def test_the_admin_form_saves_valid_tools(admin_user, rf, persona_a):
    form = admin_form(persona_a, admin_user, rf, json.dumps([WEATHER, ORDER]))
    assert form.is_valid(), form.errors
    saved = form.save()
    saved.refresh_from_db()
    assert [tool["name"] for tool in saved.tools] == ["get_weather", "lookup-order"]

    form = admin_form(persona_a, admin_user, rf, "")
    assert form.is_valid(), form.errors
    assert form.save().tools == []


@pytest.mark.django_db
def test_the_persona_admin_page_has_the_tools_field(admin_client, persona_a):
    from django.urls import reverse

    page = admin_client.get(reverse("admin:personas_persona_change", args=[persona_a.pk]))
    assert b'name="tools"' in page.content
