"""`kairos tail decisions` lines say why nothing was sent, not only that nothing was."""

from __future__ import annotations

from typing import Any

from streams.tail import describe_decision

BASE: dict[str, Any] = {
    "customer_id": "c1",
    "trigger_type": "cart_abandoned",
    "campaign": "cart_abandonment",
    "action_id": "no_action",
    "propensity": 1.0,
    "model_version": 3,
    "trigger_ts": "2026-12-07T12:00:00Z",
    "decided_ts": "2026-12-07T12:00:00.002Z",
    "holdout": False,
    "explore": False,
}


def test_a_decision_to_do_nothing_says_which_guardrail_or_rule_made_it() -> None:
    """A run of frequency-capped decisions showed only `no_action p=1.000` (QA, campaign author)."""
    capped = describe_decision({**BASE, "reason": "guardrail:frequency_cap"})
    assert capped.endswith("(guardrail:frequency_cap)")
    assert describe_decision({**BASE, "reason": "no_eligible_action"}).endswith(
        "(no_eligible_action)"
    )
    chosen = describe_decision({**BASE, "action_id": "email:x:y:now", "reason": "policy"})
    assert "policy" not in chosen and "(" not in chosen
    assert describe_decision({**BASE, "holdout": True, "reason": "holdout"}).endswith("holdout")
