"""Error classes an attempt can end with; the executor reports them, the router's retry rules match them."""

from enum import StrEnum


class ErrorClass(StrEnum):
    # A retry may succeed: timeouts before a write was sent, resets, 429, 5xx, degraded dependencies.
    TRANSIENT = "transient"
    # Retrying the same request cannot succeed: 4xx, invalid payload, schema violations.
    PERMANENT = "permanent"
    # Credentials missing, expired or refused; a human has to fix them.
    AUTH = "auth"
    # The system of record refused on its own rules: locked record, illegal transition.
    BUSINESS_RULE = "business_rule"
    # A write was sent and no clean answer came back: it may or may not have been applied.
    UNKNOWN_OUTCOME = "unknown_outcome"
    # The step ran past its own timeout (the executor gave up waiting).
    TIMEOUT = "timeout"
    # Keel's own guard refused the step (payload hash mismatch, cancelled run, missing approval).
    REFUSED = "refused"


#: The pseudo-class a retrier or catcher uses to match every error class (like Step Functions' States.ALL).
ALL_ERRORS = "all"

#: Classes that are worth retrying automatically by default. unknown_outcome is deliberately absent:
#: it is retried only after verification says the write did not land.
RETRYABLE_BY_DEFAULT: frozenset[ErrorClass] = frozenset({ErrorClass.TRANSIENT, ErrorClass.TIMEOUT})
