"""Exceptions the audit core raises; each one names a condition a caller can act on."""


class AuditError(Exception):
    """Base class: an operational error (I/O, configuration), never a verdict about the log."""


class SegmentExistsError(AuditError):
    """A segment with this index is already stored; segments are never rewritten."""


class KeyMismatchError(AuditError):
    """The writer's signing key cannot continue this log (retired, or no logged key change to it)."""


class StoreCorruptError(AuditError):
    """The newest stored segment does not check out, so the writer refuses to build on it."""


class RecordNotFoundError(AuditError):
    """No record with the requested id or sequence exists in the log."""
