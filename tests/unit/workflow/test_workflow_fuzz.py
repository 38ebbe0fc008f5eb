"""The loader refuses any text with a WorkflowError and never fails any other way."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel_router.workflow import WorkflowError, load_policy_text, load_workflow_text

YAMLISH = st.lists(
    st.sampled_from([*string.printable, "<<", "${", "&a", "*a", "!!", "é", "\u2028", "\x00", "\ufeff", "\ud800"]),
    max_size=200,
).map("".join)

FRAGMENTS = st.lists(
    st.sampled_from(
        [
            "name: w\n",
            "steps:\n",
            "  - id: a\n",
            "  - {id: b, kind: succeed}\n",
            "    kind: tool\n",
            "    kind: choice\n",
            "    tool: t.x\n",
            "    side_effect: write\n",
            "    retry:\n",
            "      - error_equals: [all]\n",
            "      - error_equals: [unknown_outcome]\n",
            "        backoff_rate: 0.5\n",
            "    next: b\n",
            "    input: {x: '${steps.a.y}', <<: *m}\n",
            "x: &m {k: 1}\n",
            "y: &r [*r]\n",
            "z: &q {k: *q}\n",
            "    choices: [{variable: input.x, equals: 1, next: a}]\n",
            "    default: b\n",
            "    end: true\n",
            "version: 99999999999999999999999999999999999999\n",
            "n: 1e999\n",
            "? [a]\n: b\n",
            "- \n",
            "  ",
            "\t",
            "---\n",
            "!!binary x\n",
        ]
    ),
    max_size=14,
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(YAMLISH, FRAGMENTS))
def test_loader_raises_only_workflow_error(text: str) -> None:
    for load in (load_workflow_text, load_policy_text):
        try:
            load(text, "fuzz.yaml")
        except WorkflowError as exc:
            assert exc.problems
            assert all(p.file == "fuzz.yaml" for p in exc.problems)
            assert all(str(p) for p in exc.problems)
