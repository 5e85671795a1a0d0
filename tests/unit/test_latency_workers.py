"""The latency benchmark with several Kairos workers reads GC pauses and log signals from all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.latency import LOG_SIGNALS, GcPauses, _log_signals


def _gc_metrics(full: int, seconds: float) -> str:
    """A worker's /metrics with `full` generation-2 pauses taking `seconds` in all."""
    return (
        "# HELP kairos_gc_pause_seconds GC pauses\n"
        "# TYPE kairos_gc_pause_seconds histogram\n"
        f'kairos_gc_pause_seconds_bucket{{generation="2",le="+Inf"}} {full}\n'
        f'kairos_gc_pause_seconds_count{{generation="2"}} {full}\n'
        f'kairos_gc_pause_seconds_sum{{generation="2"}} {seconds}\n'
        'kairos_gc_pause_seconds_bucket{generation="0",le="+Inf"} 10\n'
        'kairos_gc_pause_seconds_count{generation="0"} 10\n'
        'kairos_gc_pause_seconds_sum{generation="0"} 0.001\n'
    )


@contextmanager
def _serving(body: str) -> Iterator[str]:
    """An HTTP server answering every GET with `body`; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_gc_pauses_are_added_up_over_every_worker() -> None:
    with _serving(_gc_metrics(2, 0.05)) as first, _serving(_gc_metrics(3, 0.07)) as second:
        both = GcPauses.scrape_all([first, second])
        alone = GcPauses.scrape_all([first])
    assert both["2"] == (5.0, 0.05 + 0.07)
    assert both["0"] == (20.0, 0.002)
    assert alone["2"] == (2.0, 0.05)
    pauses = GcPauses.between({}, both, 10.0)
    assert pauses.full_collections == 5
    assert abs(pauses.total_ms - 122.0) < 1e-6


def test_log_signals_are_counted_over_every_worker_log(tmp_path: Path) -> None:
    needle, label = next(iter(LOG_SIGNALS.items()))
    first, second, missing = tmp_path / "w0.log", tmp_path / "w1.log", tmp_path / "absent.log"
    first.write_text(f"{needle}\nother line\n{needle}\n")
    second.write_text(f"{needle}\n")
    counts = _log_signals([first, second, missing])
    assert counts[label] == 3
    assert _log_signals([missing]) == {}
