"""Approval service metrics (label values are bounded: outcomes and refusal codes, never ids)."""

from prometheus_client import Counter, Histogram

DECISIONS = Counter(
    "keel_approval_decisions_total",
    "Approval requests settled, by outcome (approved, denied, expired, escalated, superseded, withdrawn).",
    ["outcome"],
)
VOTES = Counter("keel_approval_votes_total", "Approvals cast towards a quorum that did not settle it yet.")
REFUSALS = Counter(
    "keel_approval_refusals_total",
    "Decisions refused, by code (role_mismatch, requester_cannot_decide, already_decided, expired, ...).",
    ["code"],
)
AUTH_FAILURES = Counter("keel_approval_auth_failures_total", "Requests with a missing, unknown or disabled token.")
THROTTLED = Counter(
    "keel_approval_throttled_total",
    "Requests answered 429 because their client sent too many wrong tokens (guessing).",
)
PUBLISH_FAILURES = Counter(
    "keel_approval_publish_failures_total", "Decision events that could not be published yet (kept in the outbox)."
)
WAIT_SECONDS = Histogram(
    "keel_approval_wait_seconds",
    "Time from an approval's request to its settlement, by outcome (approved, denied, expired, ...).",
    ["outcome"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200),
)
