"""One runtime for long operations (swaps, watch jobs; deliveries, payouts and snapshot
publications to come): a persisted scheduler (``scheduler.Runtime``) over one store pattern
(``store``: compare-and-set transitions and a status history with each transition's time,
reason and attempt).  Domain layer: imports ``bridge.core`` and ``chains`` only.

Adding a long operation: a table with ``id``, ``state``, ``updated_at``, a retry counter,
``last_error`` and ``next_attempt_at``, and a history table; an ``OpTable`` naming them; an
``Operations`` whose ``step`` runs the handler of the operation's state (raising ``Wait`` while
it waits), the rest from ``OpStore``; then ``Runtime(ops, ...).run(stop)`` in a daemon.
"""

from bridge.runtime.scheduler import ERROR_BACKOFF, BlockSource, Observer, Operations, Runtime, Wait
from bridge.runtime.store import Moved, OpStore, OpTable, make_due, record, transition

__all__ = [
    "ERROR_BACKOFF",
    "BlockSource",
    "Moved",
    "Observer",
    "OpStore",
    "OpTable",
    "Operations",
    "Runtime",
    "Wait",
    "make_due",
    "record",
    "transition",
]
