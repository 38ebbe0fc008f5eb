"""Prometheus metrics of the audit service. Labels are bounded: close reasons and problem severities."""

from prometheus_client import Counter, Gauge

RECORDS_WRITTEN = Counter(
    "keel_audit_records_written_total",
    "Stream messages appended to the audit log (each is sealed into a segment soon after).",
)
GAPS = Counter(
    "keel_audit_gaps_total",
    "Stream sequence ranges recorded as gaps (messages gone from the stream before audit read them).",
)
SEGMENTS_SEALED = Counter(
    "keel_audit_segments_sealed_total",
    "Signed segments stored, by close reason (count, age, heartbeat, shutdown, rotation, erasure).",
    ["reason"],
)
LAG = Gauge(
    "keel_audit_lag",
    "Newest KEEL_EVENTS sequence minus the last sequence covered by a sealed segment.",
)
LAST_SEALED_SEQ = Gauge(
    "keel_audit_last_sealed_seq",
    "The last KEEL_EVENTS sequence covered by a sealed segment.",
)
VERIFY_PROBLEMS = Gauge(
    "keel_audit_verify_problems",
    "Problems found by the service's last full verification of its own log, by severity.",
    ["severity"],
)
VERIFY_RUNS = Counter(
    "keel_audit_verify_runs_total",
    "Full verifications of the log the service ran, by verdict.",
    ["verdict"],
)
