"""Pieces shared by the route modules: output conventions and the list envelope."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _as_utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]

Name = Annotated[str, Field(min_length=1, max_length=255)]
Text = Annotated[str, Field(min_length=1, max_length=10_000)]

# List endpoints return at most this many rows; the sandbox holds demo-sized data.
MAX_LIST = 500


class RequestModel(BaseModel):
    # Unknown fields are refused so that a typo cannot silently become a different request.
    model_config = ConfigDict(extra="forbid")


class OutputModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


T = TypeVar("T")


class ItemList(BaseModel, Generic[T]):
    items: list[T]
