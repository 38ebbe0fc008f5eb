"""Shapes of names in workflow files, and how to explain a mismatch to a person."""

#: Letters, digits, '_' and '-': safe as a NATS subject token and in a file name.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
#: Adapter and operation, e.g. billing.refund.
TOOL_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
#: Only `steps` and `errors` are writable: `input`, `run` and `human` are what the run was given.
RESULT_PATH_PATTERN = r"^(steps|errors)(\.[A-Za-z0-9_-]+)+$"

PATTERN_HINTS = {
    NAME_PATTERN: "must contain only letters, digits, '_' and '-'",
    TOOL_PATTERN: "must be dot-separated names of letters, digits, '_' and '-', e.g. billing.refund",
    RESULT_PATH_PATTERN: "must be a dotted path under steps or errors, e.g. steps.lookup",
}
