"""The envelope every Keel message carries, and the helpers that build one.

Messages are pydantic models so the same types give validation, JSON Schema and AsyncAPI documents
(FastStream cannot document msgspec Structs; see docs/decisions/0002-pydantic-contracts.md).
Unknown fields are ignored rather than refused so that an older reader keeps working when a newer
writer adds a field: types change additively.
"""

import hashlib
import uuid
from base64 import b32encode
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from keel_contracts.subjects import token


def _token(value: str) -> str:
    return token(value, "value")


Token = Annotated[str, AfterValidator(_token)]
ShortText = Annotated[str, Field(max_length=1024)]
KeyText = Annotated[str, Field(min_length=1, max_length=512)]


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def run_id_for(tenant: str, workflow: str, intent_key: str) -> str:
    """The run id an intent maps to: the same (tenant, workflow, intent key) always names the same run.

    Deriving the id instead of looking it up makes duplicate triggers converge without a shared table:
    the first `run_started` append for this id wins (it expects an empty run), every later one joins.
    """
    digest = hashlib.sha256(f"{tenant}\x1f{workflow}\x1f{intent_key}".encode()).digest()
    return "r" + b32encode(digest).decode().lower().rstrip("=")[:25]


class Message(BaseModel):
    """Fields shared by every message; `type` and `body` are fixed by each concrete message."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    type: str
    version: Annotated[int, Field(ge=1)] = 1
    run_id: Token
    workflow: Token
    step_id: Token | None = None
    attempt: Annotated[int, Field(ge=0)] = 0
    correlation_id: Annotated[str, Field(min_length=1, max_length=128)]
    causation_id: Annotated[str, Field(max_length=128)] | None = None
    actor: Annotated[str, Field(min_length=1, max_length=256)]
    tenant: Token = "default"
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    dedupe_key: KeyText

    @field_validator("version")
    @classmethod
    def _readable_version(cls, version: int) -> int:
        # Additive changes keep a type's version; a higher one comes from a writer whose change this
        # reader cannot know, so it is refused rather than read as if it were the version known here.
        known = cls.model_fields["version"].default
        if version > known:
            raise ValueError(f"this Keel reads this message type up to version {known}, not {version}")
        return version


class Body(BaseModel):
    """Base of every message body: immutable, unknown fields ignored (additive evolution)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
