"""Helpers shared by the tests that read an audit log a running service writes."""

from keel_audit.segment import parse_segment
from keel_audit.store import SegmentStore


def sealed_through(store: SegmentStore) -> int:
    """The last stream sequence covered by a sealed segment (0 for an empty log)."""
    indices = store.indices()
    return parse_segment(store.read(indices[-1])).seal.last_seq if indices else 0
