"""Executor metrics (labels are bounded: tool names come from workflow files, not from run data)."""

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter(
    "keel_step_attempts_total",
    "Tool step attempts by tool, outcome and error class.",
    ["tool", "outcome", "error_class"],
)
TOOL_SECONDS = Histogram(
    "keel_tool_duration_seconds",
    "Wall time of tool calls.",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
