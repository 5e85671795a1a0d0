"""The rdkafka worker's web server: health, readiness, metrics, dashboard and customer lookup.

The Faust runtime serves these pages from Faust's aiohttp server on its event loop; the rdkafka
worker has no event loop, so a small threaded HTTP server (stdlib) answers on a thread of its
own. Its pages and JSON are the same as the Faust runtime's, so probes, Prometheus and the
dashboard work with either runtime. Requests are rare and short, so the thread costs the
processing loop little; a sampler thread reads the registry once a second for the dashboard.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.dashboard import SAMPLE_INTERVAL_S, Sampler, dashboard_html
from streams.metrics import WorkerMetrics

log = logging.getLogger("kairos.web")

#: A customer's view for /customers/{id}: a JSON-able dict, or None when the customer is unknown.
CustomerView = Callable[[str], dict[str, Any] | None]


class WebPortError(RuntimeError):
    """The worker's web server cannot listen where the settings say (port taken, bad host)."""


class WorkerWebServer:
    """Serve /healthz, /readyz, /metrics, /dashboard, /dashboard/data and /customers/{id}."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: WorkerMetrics,
        is_ready: Callable[[], bool],
        customer_view: CustomerView,
    ) -> None:
        self.metrics = metrics
        self.is_ready = is_ready
        self.customer_view = customer_view
        self.sampler = Sampler(metrics)
        self.sampler.sample()  # a baseline, as in the Faust runtime's register_dashboard
        self._html = dashboard_html().encode()
        self._stopped = threading.Event()
        try:
            self.server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as exc:  # most often another worker on the same machine has the port
            raise WebPortError(
                f"cannot serve health, metrics and dashboard on {host}:{port} "
                f"(KAIROS_WEB_HOST, KAIROS_WEB_PORT): {exc.strerror or exc}"
            ) from exc
        self.server.daemon_threads = True

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self.server.server_address[1])

    def start(self) -> WorkerWebServer:
        """Serve on daemon threads until stop()."""
        threading.Thread(target=self.server.serve_forever, name="kairos-web", daemon=True).start()
        threading.Thread(target=self._sample, name="kairos-dashboard-sampler", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and sampling."""
        self._stopped.set()
        self.server.shutdown()
        self.server.server_close()

    def _sample(self) -> None:
        while not self._stopped.wait(SAMPLE_INTERVAL_S):
            self.sampler.sample()

    def route(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of `path` (the handler's whole logic)."""
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            ready = self.is_ready()
            return _json(200 if ready else 503, {"ready": ready})
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST.split(";")[0], generate_latest(self.metrics.registry)
        if path == "/dashboard":
            return 200, "text/html", self._html
        if path == "/dashboard/data":
            return _json(200, self.sampler.data())
        if path.startswith("/customers/"):
            customer_id = unquote(path[len("/customers/") :])
            view = self.customer_view(customer_id) if customer_id else None
            if view is None:
                return _json(404, {"error": "unknown customer"})
            return _json(500 if "error" in view else 200, view)
        return _json(404, {"error": "not found"})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(with_body=True)

            def do_HEAD(self) -> None:
                """What GET would answer, without the body (probes that only read the status)."""
                self._answer(with_body=False)

            def _answer(self, with_body: bool) -> None:
                try:
                    status, content_type, body = server.route(self.path)
                except Exception:
                    log.exception("web request failed: %s", self.path)
                    status, content_type, body = _json(500, {"error": "internal error"})
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # request lines would flood the worker's log

        return Handler


def _json(status: int, body: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
