"""Dead letters: messages a consumer refused, kept whole with the reason, in KEEL_DLQ."""

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from keel_contracts.envelope import new_id, utcnow


class DeadLetter(BaseModel):
    """A refused message. `data_b64` is the original payload, byte for byte, so nothing is lost."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(default_factory=new_id)
    type: Literal["dead_letter"] = "dead_letter"
    version: int = 1
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    service: str
    consumer: str
    reason: Annotated[str, Field(max_length=64)]
    detail: Annotated[str, Field(max_length=8192)]
    subject: str
    stream: str | None = None
    stream_seq: int | None = None
    num_delivered: int | None = None
    message_id: str | None = None
    run_id: str | None = None
    headers: dict[str, str]
    data_b64: str
    data_bytes: int
