"""The chaos workload: which runs of the example workflows to start, with what input, and what the
approver does when a run asks for approval. Everything is drawn from one seeded RNG, so a seed names
the same workload every time."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from pydantic import JsonValue

from keel_contracts.commands import TriggerRun
from keel_shared.triggers import build_trigger

#: Share of each example workflow in the workload (out of 100).
MIX = {"slack_to_ticket": 35, "refund": 25, "access_change": 20, "demo": 20}
#: The sandbox's seeded enterprise charge (129900 cents): refunds of at most 100 cents each never use
#: it up, so whether a refund is allowed does not depend on the order runs happen to finish in.
REFUND_CHARGE = "2"
TRIGGER_SOURCE = "chaos"


class Decision(StrEnum):
    """What the approver does with the run's approval request, if it makes one."""

    APPROVE = "approve"
    DENY = "deny"
    LEAVE = "leave"  # the run stays parked in needs_approval


#: Where a run's one write lands: a sandbox table, or the demo ledger.
EFFECT_TABLE = {
    "slack_to_ticket": "tickets",
    "refund": "billing_refunds",
    "access_change": "access_grants",
    "demo": "demo_effects",
}


@dataclass(frozen=True)
class PlannedRun:
    index: int
    workflow: str
    input: dict[str, JsonValue]
    intent_key: str
    decision: Decision
    #: The trigger is built once, so every re-publish of it carries the same message id.
    trigger: TriggerRun

    @property
    def run_id(self) -> str:
        return self.trigger.run_id

    @property
    def effect_table(self) -> str:
        return EFFECT_TABLE[self.workflow]


def _input(workflow: str, index: int, rng: random.Random) -> dict[str, JsonValue]:
    roll = rng.random()
    if workflow == "slack_to_ticket":
        author = rng.choice(["alice@acme.example", "bob@acme.example", f"stranger{index}@nowhere.example"])
        text = "thanks!" if roll < 0.15 else rng.choice(["The export is broken", "Login error again", "help: bug"])
        return {"channel": "C0CHAOS", "ts": f"{index}.000100", "user_email": author, "text": f"{text} #{index}"}
    if workflow == "refund":
        # One in ten asks for more than the charge holds: refused before any approval is asked for.
        amount = 10**9 if roll < 0.1 else rng.randint(1, 100)
        return {"charge_id": REFUND_CHARGE, "amount_cents": amount, "reason": f"chaos refund {index}"}
    if workflow == "access_change":
        if roll < 0.1:  # alice already holds github:member (sandbox seed): nothing to do
            return {"user": "alice@acme.example", "group": "github:member", "justification": "already there"}
        if roll < 0.2:  # production without an incident reference: refused by the workflow's rules
            return {"user": f"user{index}@acme.example", "group": "prod-db:reader", "justification": "just curious"}
        return {"user": f"user{index}@acme.example", "group": "github:member", "justification": f"onboarding {index}"}
    return {"request": f"chaos {index}"}


def plan_runs(count: int, rng: random.Random, tag: str) -> list[PlannedRun]:
    workflows = list(MIX)
    weights = [MIX[w] for w in workflows]
    plans = []
    for index in range(count):
        workflow = rng.choices(workflows, weights)[0]
        data = _input(workflow, index, rng)
        decision = rng.choices(list(Decision), [70, 15, 15])[0]
        intent_key = f"{tag}-{index}"
        trigger = build_trigger(workflow, data, intent_key, source=TRIGGER_SOURCE)
        plans.append(PlannedRun(index, workflow, data, intent_key, decision, trigger))
    return plans
