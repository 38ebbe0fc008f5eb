"""Deciders: the rules decider, and the OpenAI-compatible decider against a local HTTP server that speaks
the chat-completions protocol (structured output, errors classified by status)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keel_contracts.errors import ErrorClass
from keel_executor.errors import ToolError
from keel_executor.tools.deciders import openai, rules
from keel_executor.tools.registry import ToolContext
from keel_shared.natsserver import free_port

CTX = ToolContext(
    run_id="r-1",
    workflow="triage",
    step_id="classify",
    attempt=1,
    tenant="acme",
    correlation_id="0af7651916cd43dd8448eb211c80319c",
    idempotency_key="keel-r-1-classify-1",
    timeout_seconds=2,
    data_dir="/nonexistent",
)
OPTIONS = [
    {
        "intent": "create_ticket",
        "description": "a problem report",
        "payload_schema": {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}},
    },
    {"intent": "ignore", "description": "chit-chat", "payload_schema": {"type": "object"}},
]


# --- rules ----------------------------------------------------------------------------------------------
async def test_the_first_matching_rule_names_the_intent_and_its_payload():
    data: dict[str, Any] = {
        "text": "My invoice PAGE is broken",
        "customer": {"tier": "gold"},
        "rules": [
            {"when": {"field": "customer.tier", "equals": "silver"}, "intent": "ignore"},
            {
                "when": [{"contains": "nothing"}, {"contains_any": ["broken", "error"], "matches": "invoice|bill"}],
                "intent": "create_ticket",
                "payload": {"title": "Broken invoice"},
                "confidence": 0.8,
            },
        ],
        "options": OPTIONS,
    }

    answer = await rules(CTX, data)

    assert answer == {
        "intent": "create_ticket",
        "payload": {"title": "Broken invoice"},
        "confidence": 0.8,
        "reason": "rules[1] matched",
    }


async def test_no_matching_rule_is_unsure_unless_a_default_is_given():
    assert (await rules(CTX, {"text": "hi", "rules": [{"when": {"contains": "x"}, "intent": "a"}]}))["unsure"] is True
    answer = await rules(CTX, {"text": "hi", "rules": [], "default": {"intent": "ignore"}})
    assert answer["intent"] == "ignore" and answer["payload"] == {}


async def test_a_malformed_rule_is_a_permanent_error():
    with pytest.raises(ToolError) as caught:
        await rules(CTX, {"text": "hi", "rules": [{"when": {"regex": ".*"}, "intent": "a"}]})
    assert caught.value.error_class is ErrorClass.PERMANENT and "unknown condition 'regex'" in str(caught.value)


# --- OpenAI-compatible ----------------------------------------------------------------------------------
class FakeCompletions:
    """A chat-completions endpoint: answers what the test queues, records what it was sent."""

    def __init__(self) -> None:
        self.replies: list[Response] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hang = False

    async def completions(self, request: Request) -> Response:
        self.requests.append(json.loads(await request.body()))
        self.headers.append(dict(request.headers))
        if self.hang:
            await asyncio.sleep(3)
        return self.replies.pop(0)


def completion(content: Any, refusal: str | None = None) -> Response:
    message = {"role": "assistant", "content": json.dumps(content) if not isinstance(content, str) else content}
    if refusal:
        message = {"role": "assistant", "content": None, "refusal": refusal}
    return JSONResponse({"id": "c-1", "object": "chat.completion", "choices": [{"index": 0, "message": message}]})


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeCompletions]:
    fake = FakeCompletions()
    app = Starlette(routes=[Route("/v1/chat/completions", fake.completions, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    monkeypatch.setenv("KEEL_OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("KEEL_OPENAI_MODEL", "test-model")
    monkeypatch.setenv("KEEL_OPENAI_API_KEY", "sk-test")
    try:
        yield fake
    finally:
        server.should_exit = True
        await task


async def test_the_openai_decider_asks_for_structured_output_built_from_the_declared_options(fake):
    fake.replies.append(
        completion({"intent": "create_ticket", "payload": {"title": "Printer"}, "confidence": 0.9, "unsure": False})
    )

    answer = await openai(CTX, {"message": "the printer is on fire", "options": OPTIONS, "min_confidence": 0.7})

    assert answer == {"intent": "create_ticket", "payload": {"title": "Printer"}, "unsure": False, "confidence": 0.9}
    (sent,) = fake.requests
    assert sent["model"] == "test-model" and sent["temperature"] == 0
    schema = sent["response_format"]["json_schema"]["schema"]
    assert sent["response_format"]["type"] == "json_schema"
    assert [v["properties"]["intent"]["const"] for v in schema["anyOf"]] == ["create_ticket", "ignore"]
    assert schema["anyOf"][0]["properties"]["payload"] == OPTIONS[0]["payload_schema"]
    assert json.loads(sent["messages"][1]["content"]) == {"message": "the printer is on fire"}
    assert "create_ticket: a problem report" in sent["messages"][0]["content"]
    assert fake.headers[0]["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (completion("not json at all"), "not JSON"),
        (completion(None, refusal="I can't help with that"), "refused"),
        (completion([1, 2]), "not a JSON object"),
    ],
)
async def test_an_answer_the_router_could_not_trust_comes_back_unsure(fake, reply, reason):
    fake.replies.append(reply)

    answer = await openai(CTX, {"message": "?", "options": OPTIONS})

    assert answer["unsure"] is True and reason in answer["reason"]


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (429, ErrorClass.TRANSIENT),
        (500, ErrorClass.TRANSIENT),
        (503, ErrorClass.TRANSIENT),
        (401, ErrorClass.AUTH),
        (403, ErrorClass.AUTH),
        (400, ErrorClass.PERMANENT),
        (404, ErrorClass.PERMANENT),
    ],
)
async def test_http_errors_are_classified(fake, status, error_class):
    fake.replies.append(JSONResponse({"error": {"message": "nope"}}, status_code=status, headers={"Retry-After": "7"}))

    with pytest.raises(ToolError) as caught:
        await openai(CTX, {"message": "?", "options": OPTIONS})

    assert caught.value.error_class is error_class
    if status == 429:
        assert caught.value.retry_after == 7.0


async def test_a_timeout_is_transient(fake):
    fake.hang = True
    fake.replies.append(completion({}))

    with pytest.raises(ToolError) as caught:
        await openai(CTX, {"message": "?", "options": OPTIONS})

    assert caught.value.error_class is ErrorClass.TRANSIENT


async def test_without_a_model_or_key_the_decider_reports_an_auth_error(monkeypatch):
    monkeypatch.delenv("KEEL_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("KEEL_OPENAI_MODEL", "m")

    with pytest.raises(ToolError) as caught:
        await openai(CTX, {"options": OPTIONS})

    assert caught.value.error_class is ErrorClass.AUTH
