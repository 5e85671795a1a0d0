"""An in-memory index of due times (timers and attribution deadlines), rebuilt from the tables."""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass, field


class Unchanged(enum.Enum):
    """Marks a due time a processing result did not look at: the one already indexed stands."""

    KEEP = "keep"


#: Stale heap entries tolerated beyond the live ones before a rebuild (TimerIndex._compact).
COMPACT_SLACK = 1024

#: A result's due time that is as it was (its row was not read, or nothing changed).
KEEP = Unchanged.KEEP


@dataclass
class TimerIndex:
    """Due times of this worker's customers, soonest first.

    Each customer has two: the soonest timer of its state row (derived triggers) and the soonest
    attribution deadline of its pending row. They are kept apart so that processing that reads
    only one row (an event without a trigger never reads the pending row) updates only its own.
    The customer is due at the sooner of the two; heap entries that no longer match are stale.
    A stale entry would stay until its time came (a lapse timer moved by every event: 60 days),
    so the heap is rebuilt from the maps once stale entries outnumber the live ones.
    """

    heap: list[tuple[float, str]] = field(default_factory=list)
    timer_at: dict[str, float] = field(default_factory=dict)
    deadline_at: dict[str, float] = field(default_factory=dict)
    #: Customers with something due (either map), kept as a count for the gauge.
    customers: int = 0

    def due(self, customer_id: str) -> float | None:
        """When the customer is due: the sooner of its timer and its deadline (None: never)."""
        first = self.timer_at.get(customer_id)
        second = self.deadline_at.get(customer_id)
        return second if first is None else first if second is None else min(first, second)

    def schedule(
        self,
        customer_id: str,
        timer: float | Unchanged | None,
        deadline: float | Unchanged | None = KEEP,
    ) -> None:
        """Set the customer's soonest timer and deadline (None: none; KEEP: as indexed)."""
        before = self.due(customer_id)
        for kind, value in ((self.timer_at, timer), (self.deadline_at, deadline)):
            if value is KEEP:
                continue
            if value is None:
                kind.pop(customer_id, None)
            else:
                kind[customer_id] = value
        after = self.due(customer_id)
        self.customers += (after is not None) - (before is not None)
        if after is not None and after != before:
            heapq.heappush(self.heap, (after, customer_id))
            if len(self.heap) > 2 * self.customers + COMPACT_SLACK:
                self._compact()

    def _compact(self) -> None:
        """Rebuild the heap with one entry per customer (O(n), after at least n pushes)."""
        heap: list[tuple[float, str]] = []
        for customer_id in self.timer_at.keys() | self.deadline_at.keys():
            due = self.due(customer_id)
            if due is not None:
                heap.append((due, customer_id))
        heapq.heapify(heap)
        self.heap = heap

    def soonest(self) -> float | None:
        """The earliest due time in the heap (None: nothing due). It may be a stale entry's, but
        never later than the soonest live one: waking for it costs a look, never a miss."""
        return self.heap[0][0] if self.heap else None

    def cancel(self, customer_id: str) -> None:
        """Nothing is due for the customer any more (its rows were removed)."""
        self.schedule(customer_id, None, None)

    def pop_due(self, now: float, limit: int = 10_000) -> list[str]:
        """Customers whose due time has come (stale heap entries are skipped).

        A customer that comes out has nothing indexed any more: the tick that follows reads both
        rows and schedules both due times again.
        """
        out: list[str] = []
        while self.heap and self.heap[0][0] <= now and len(out) < limit:
            due, customer_id = heapq.heappop(self.heap)
            if self.due(customer_id) == due:
                self.cancel(customer_id)
                out.append(customer_id)
        return out

    def clear(self) -> None:
        """Forget everything (before a rebuild after a rebalance)."""
        self.heap.clear()
        self.timer_at.clear()
        self.deadline_at.clear()
        self.customers = 0
