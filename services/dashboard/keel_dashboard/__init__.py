"""Keel's live dashboard: runs by state (KEEL_RUNS KV watch), run timelines over server-sent events
bridged from KEEL_EVENTS, and the run-state gauges Prometheus scrapes."""
