"""An in-memory index of due times (timers and attribution deadlines), rebuilt from the tables."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class TimerIndex:
    """Due times of this worker's customers (timers and attribution deadlines), soonest first."""

    heap: list[tuple[float, str]] = field(default_factory=list)
    due_at: dict[str, float] = field(default_factory=dict)

    def schedule(self, customer_id: str, due: float | None) -> None:
        """Remember the customer's next due time (None: nothing due)."""
        if due is None:
            self.due_at.pop(customer_id, None)
            return
        if self.due_at.get(customer_id) == due:
            return
        self.due_at[customer_id] = due
        heapq.heappush(self.heap, (due, customer_id))

    def pop_due(self, now: float, limit: int = 10_000) -> list[str]:
        """Customers whose due time has come (stale heap entries are skipped)."""
        out: list[str] = []
        while self.heap and self.heap[0][0] <= now and len(out) < limit:
            due, customer_id = heapq.heappop(self.heap)
            if self.due_at.get(customer_id) == due:
                del self.due_at[customer_id]
                out.append(customer_id)
        return out

    def clear(self) -> None:
        """Forget everything (before a rebuild after a rebalance)."""
        self.heap.clear()
        self.due_at.clear()
