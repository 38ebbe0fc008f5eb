"""Router metrics. Labels are workflow names, states and tenants: bounded sets, never run ids."""

from prometheus_client import Counter, Gauge

RUNS_STARTED = Counter("keel_runs_started_total", "Runs started, by workflow.", ["workflow"])
RUNS_FINISHED = Counter("keel_runs_finished_total", "Runs that reached a final state.", ["workflow", "state"])
TRIGGERS_JOINED = Counter(
    "keel_triggers_joined_total", "Triggers that joined an existing run (same intent key).", ["workflow"]
)
TRANSITIONS = Counter("keel_run_transitions_total", "Run state changes, by the state entered.", ["workflow", "state"])
RETRIES_SCHEDULED = Counter(
    "keel_retries_scheduled_total", "Retries scheduled, by error class.", ["workflow", "error_class"]
)
RUNS_IN_FLIGHT = Gauge(
    "keel_runs_in_flight", "Runs not done, failed or cancelled, as this router process counts them.", ["tenant"]
)
TRIGGERS_REFUSED = Counter(
    "keel_triggers_refused_total", "Triggers refused by a limit before they started a run.", ["tenant", "reason"]
)
