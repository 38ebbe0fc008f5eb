"""Errors a tool adapter raises to say how its attempt ended; each carries its ErrorClass."""

from keel_contracts.errors import ErrorClass


class ToolError(Exception):
    error_class: ErrorClass = ErrorClass.PERMANENT

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        # A hint from the system of record (HTTP Retry-After), honoured by the retry plan.
        self.retry_after = retry_after


class TransientError(ToolError):
    error_class = ErrorClass.TRANSIENT


class PermanentError(ToolError):
    error_class = ErrorClass.PERMANENT


class AuthError(ToolError):
    error_class = ErrorClass.AUTH


class BusinessRuleError(ToolError):
    error_class = ErrorClass.BUSINESS_RULE


class UnknownOutcomeError(ToolError):
    """The write was sent and no clean answer came back: it may or may not have been applied."""

    error_class = ErrorClass.UNKNOWN_OUTCOME


class StepTimeoutError(ToolError):
    error_class = ErrorClass.TIMEOUT


class RefusedError(ToolError):
    """Keel's own guard refused the attempt before it reached the tool (e.g. an unapproved payload)."""

    error_class = ErrorClass.REFUSED


class UnknownToolError(PermanentError):
    pass


class NoReadBack(Exception):
    """Raised by a tool's own `verify` when it has no way to look this write up (say, `http.request`
    without `verify_key_path`): the executor then acts as if the tool had no read-back at all."""


def classify(exc: BaseException) -> ErrorClass:
    """The class of any exception a tool let escape. Untyped exceptions are bugs or unexpected
    states of the tool, so they are permanent: retrying the same input will not fix them."""
    if isinstance(exc, ToolError):
        return exc.error_class
    if isinstance(exc, TimeoutError):
        return ErrorClass.TIMEOUT
    if isinstance(exc, ConnectionError):
        return ErrorClass.TRANSIENT
    return ErrorClass.PERMANENT
