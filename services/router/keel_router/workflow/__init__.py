"""The workflow language of Keel's router: models, loader, templating, conditions, retry/catch, policy.

Pure domain logic: nothing here talks to NATS. The router loads workflows and the policy once, then calls
these functions while it interprets a run.
"""

from .conditions import ConditionError, evaluate_choice
from .errors import Problem, RunDataError, WorkflowError
from .loader import load_workflow, load_workflow_text, load_workflows
from .models import (
    ApprovalStep,
    ChoiceStep,
    DecideStep,
    FailStep,
    HumanStep,
    Step,
    SucceedStep,
    ToolStep,
    WaitStep,
    Workflow,
)
from .policy import (
    ApprovalRequirement,
    CapHit,
    Policy,
    RunCounters,
    check_caps,
    check_payload,
    load_policy,
    load_policy_text,
    required_approval,
)
from .retry import Catcher, Retrier, RetryDecision, match_catcher, plan_retry
from .runtime import (
    DecisionAccepted,
    DecisionNeedsHuman,
    catch_writes,
    check_decision,
    check_human_input,
    resolve_wait,
)
from .templating import TemplateError, make_context, references, render

__all__ = [
    "ApprovalRequirement",
    "ApprovalStep",
    "CapHit",
    "Catcher",
    "ChoiceStep",
    "ConditionError",
    "DecideStep",
    "DecisionAccepted",
    "DecisionNeedsHuman",
    "FailStep",
    "HumanStep",
    "Policy",
    "Problem",
    "Retrier",
    "RetryDecision",
    "RunCounters",
    "RunDataError",
    "Step",
    "SucceedStep",
    "TemplateError",
    "ToolStep",
    "WaitStep",
    "Workflow",
    "WorkflowError",
    "catch_writes",
    "check_caps",
    "check_decision",
    "check_human_input",
    "check_payload",
    "evaluate_choice",
    "load_policy",
    "load_policy_text",
    "load_workflow",
    "load_workflow_text",
    "load_workflows",
    "make_context",
    "match_catcher",
    "plan_retry",
    "references",
    "render",
    "required_approval",
    "resolve_wait",
]
