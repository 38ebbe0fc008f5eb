"""Deciders: tools a `decide` step asks for an intent among its declared options.

A decider returns `{intent, payload, confidence?, unsure?, reason?}`. It never decides alone: the router
accepts the answer only if the intent is declared, the payload valid for it and the decider sure, and
hands anything else to a person. The router adds the step's declared options to the decider's input as
`options` (and `min_confidence` when the step sets one).

- `decider.rules`: deterministic keyword/field rules given in the step's input (demos, tests, and any
  routing that needs no model).
- `decider.openai`: an OpenAI-compatible chat-completions endpoint with a JSON-schema response format
  built from the declared options.
"""

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import JsonValue

from keel_executor.errors import AuthError, PermanentError, TransientError
from keel_executor.tools.registry import ToolContext

RESERVED_KEYS = ("options", "min_confidence", "rules", "default")


# --- rules ----------------------------------------------------------------------------------------------
def _lookup(data: Mapping[str, Any], path: str) -> Any:
    cur: Any = data
    for seg in path.split("."):
        if isinstance(cur, Mapping) and seg in cur:
            cur = cur[seg]
        else:
            return None
    return cur


def _words(value: Any) -> str:
    return (value if isinstance(value, str) else json.dumps(value, default=str)).casefold()


def _holds(when: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Every condition of a rule holds (an empty `when` always does)."""
    value = _lookup(data, str(when.get("field", "text")))
    for op, arg in when.items():
        match op:
            case "field":
                continue
            case "contains":
                ok = value is not None and _words(arg) in _words(value)
            case "contains_any":
                ok = value is not None and any(_words(a) in _words(value) for a in _as_list(arg))
            case "contains_all":
                ok = value is not None and all(_words(a) in _words(value) for a in _as_list(arg))
            case "equals":
                ok = value == arg
            case "in":
                ok = value in _as_list(arg)
            case "present":
                ok = (value is not None) == bool(arg)
            case "matches":
                # A whole-word keyword pattern, e.g. "refund|money back"; no user regex (no ReDoS).
                words = [re.escape(w.strip()) for w in str(arg).split("|") if w.strip()]
                ok = value is not None and bool(re.search(rf"\b(?:{'|'.join(words)})\b", _words(value)))
            case _:
                raise PermanentError(
                    f"decider.rules: unknown condition {op!r} (field, contains, contains_any, "
                    "contains_all, equals, in, present, matches)"
                )
        if not ok:
            return False
    return True


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


async def rules(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """The first rule whose conditions hold names the intent. Input:

        rules: [{when: {field: text, contains_any: [refund, "money back"]}, intent: refund,
                 payload: {...}, confidence: 0.9}, ...]
        default: {intent: ignore, payload: {}}     # optional; without it no match means unsure

    Fields are looked up in the decider's input (dotted paths); `when` may also be a list (any of them).
    """
    table = data.get("rules", [])
    if not isinstance(table, list):
        raise PermanentError("decider.rules: rules must be a list")
    for index, rule in enumerate(table):
        if not isinstance(rule, dict) or not isinstance(rule.get("intent"), str):
            raise PermanentError(f"decider.rules: rules[{index}] needs an intent")
        when = rule.get("when", {})
        alternatives = when if isinstance(when, list) else [when]
        if any(isinstance(w, dict) and _holds(w, data) for w in alternatives):
            return {
                "intent": rule["intent"],
                "payload": rule.get("payload", {}),
                "confidence": rule.get("confidence", 1.0),
                "reason": f"rules[{index}] matched",
            }
    default = data.get("default")
    if isinstance(default, dict):
        return {"confidence": 1.0, "payload": {}, **default, "reason": "no rule matched; default"}
    return {"unsure": True, "reason": f"none of {len(table)} rules matched"}


# --- OpenAI-compatible chat completions ----------------------------------------------------------------
def response_schema(options: list[Any]) -> dict[str, Any]:
    """A JSON Schema the model's answer must follow: one declared intent with that option's payload."""
    variants = [
        {
            "type": "object",
            "properties": {
                "intent": {"type": "string", "const": o["intent"]},
                "payload": o.get("payload_schema") or {"type": "object"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "unsure": {"type": "boolean"},
            },
            "required": ["intent", "payload", "confidence", "unsure"],
        }
        for o in options
        if isinstance(o, dict) and isinstance(o.get("intent"), str)
    ]
    return {"anyOf": variants} if variants else {"type": "object"}


def _messages(data: Mapping[str, Any], options: list[Any]) -> list[dict[str, str]]:
    described = "\n".join(
        f"- {o['intent']}: {o.get('description') or '(no description)'}; payload schema "
        f"{json.dumps(o.get('payload_schema') or {'type': 'object'})}"
        for o in options
        if isinstance(o, dict) and "intent" in o
    )
    system = (
        "You classify a request into exactly one of the declared intents and fill that intent's payload. "
        "Use only facts from the request. If no intent fits, or a required payload field is not in the "
        "request, answer with unsure: true and your best guess. Give your confidence from 0 to 1.\n"
        f"Declared intents:\n{described}"
    )
    request = {k: v for k, v in data.items() if k not in RESERVED_KEYS}
    return [{"role": "system", "content": system}, {"role": "user", "content": json.dumps(request, default=str)}]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


async def openai(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Ask an OpenAI-compatible `/chat/completions` endpoint (KEEL_OPENAI_BASE_URL, KEEL_OPENAI_MODEL,
    KEEL_OPENAI_API_KEY) with a structured-output response format built from the declared options."""
    base = os.environ.get("KEEL_OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
    model = os.environ.get("KEEL_OPENAI_MODEL")
    key = os.environ.get("KEEL_OPENAI_API_KEY")
    if not model or not key:
        raise AuthError("decider.openai needs KEEL_OPENAI_MODEL and KEEL_OPENAI_API_KEY in the executor's environment")
    options = data.get("options")
    if not isinstance(options, list) or not options:
        raise PermanentError("decider.openai: no declared options in the input (the router adds them)")
    request = {
        "model": model,
        "messages": _messages(data, options),
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "keel_decision", "schema": response_schema(options), "strict": False},
        },
    }
    headers = {"Authorization": f"Bearer {key}", "X-Keel-Run-Id": ctx.run_id, "traceparent": ctx.traceparent()}
    try:
        async with httpx.AsyncClient(timeout=ctx.timeout_seconds) as client:
            response = await client.post(f"{base}/chat/completions", json=request, headers=headers)
    except httpx.TimeoutException as exc:
        # A read has no side effect: a timeout is worth asking again.
        raise TransientError(f"decider.openai: no answer from {base} ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise TransientError(f"decider.openai: cannot reach {base}: {exc}") from None
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientError(
            f"decider.openai: HTTP {status}: {response.text[:300]}", retry_after=_retry_after(response)
        )
    if status in (401, 403):
        raise AuthError(f"decider.openai: HTTP {status}: the key is missing, wrong or not allowed")
    if status >= 400:
        raise PermanentError(f"decider.openai: HTTP {status}: {response.text[:300]}")
    return read_completion(response)


def read_completion(response: httpx.Response) -> dict[str, JsonValue]:
    """The decision in a completion. Anything the router could not trust (refusal, no JSON, no intent)
    comes back as unsure, so the decision goes to a person rather than failing the step."""
    try:
        message = response.json()["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise PermanentError(f"decider.openai: not a chat completion: {response.text[:300]}") from None
    if message.get("refusal"):
        return {"unsure": True, "reason": f"the model refused: {str(message['refusal'])[:300]}"}
    try:
        answer = json.loads(message.get("content") or "")
    except ValueError:
        return {"unsure": True, "reason": "the model's answer is not JSON"}
    if not isinstance(answer, dict):
        return {"unsure": True, "reason": "the model's answer is not a JSON object"}
    out: dict[str, JsonValue] = {
        "intent": answer.get("intent"),
        "payload": answer.get("payload", {}),
        "unsure": answer.get("unsure") is True,
    }
    if isinstance(answer.get("confidence"), int | float):
        out["confidence"] = answer["confidence"]
    return out
