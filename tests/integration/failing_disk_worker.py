"""`python -m tests.integration.failing_disk_worker worker`: the Kairos CLI, with the first table
write of one customer failing as a full disk would (ENOSPC), on either runtime.

The customer is FAILING_DISK_CUSTOMER. Only the write fails: the broker, Faust, the processor
and RocksDB are the real ones, so the test sees what a worker does when its disk fails mid-turn.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import faust.stores.rocksdb

from streams import rdkafka_worker
from streams.cli import app

FAIL_KEY = os.environ["FAILING_DISK_CUSTOMER"].encode()
_failed = False


def _disk_full() -> OSError:
    global _failed
    _failed = True
    return OSError(errno.ENOSPC, "No space left on device (injected by the test)")


_faust_set = faust.stores.rocksdb.Store._set


def _faust_set_failing(self: Any, key: bytes, value: bytes | None) -> None:
    if key == FAIL_KEY and not _failed:
        raise _disk_full()
    _faust_set(self, key, value)


class _FailingDb:
    """A table's RocksDB database whose next write batch fails once armed."""

    armed = False

    def __init__(self, db: Any) -> None:
        self._db = db

    def write(self, batch: Any) -> None:
        if _FailingDb.armed and not _failed:
            raise _disk_full()
        self._db.write(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


_store_init = rdkafka_worker.TableStore.__init__


def _store_init_failing(self: Any, *args: Any, **kwargs: Any) -> None:
    _store_init(self, *args, **kwargs)
    self.db = _FailingDb(self.db)


_write_all = rdkafka_worker.RdkafkaWorker._write_all


def _write_all_failing(self: Any, writes: list[Any]) -> None:
    """Arm the failure for the turn that writes the customer's rows (after its note is taken)."""
    _FailingDb.armed = any(key == FAIL_KEY for _, rows, _ in writes for _, key, _ in rows)
    _write_all(self, writes)


faust.stores.rocksdb.Store._set = _faust_set_failing  # type: ignore[method-assign]
rdkafka_worker.TableStore.__init__ = _store_init_failing  # type: ignore[method-assign]
rdkafka_worker.RdkafkaWorker._write_all = _write_all_failing  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv = ["kairos", *sys.argv[1:]]
    app()
