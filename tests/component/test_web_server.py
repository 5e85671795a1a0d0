"""The worker's web server without a broker: GET and HEAD answer alike (HEAD without a body)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from streams.metrics import WorkerMetrics
from streams.web_server import WebPortError, WorkerWebServer


def _request(url: str, method: str) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Length"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Length"]


def test_head_answers_what_get_answers_without_the_body() -> None:
    web = WorkerWebServer(
        "127.0.0.1", 0, WorkerMetrics(), lambda: True, lambda c: {"id": c} if c == "known" else None
    ).start()
    try:
        base = f"http://127.0.0.1:{web.port}"
        for path, status in (("/healthz", 200), ("/customers/known", 200), ("/customers/x", 404)):
            got_status, got_body, got_length = _request(base + path, "GET")
            head_status, head_body, head_length = _request(base + path, "HEAD")
            assert (got_status, head_status) == (status, status)
            assert got_body and head_body == b""
            assert head_length == got_length == str(len(got_body))
    finally:
        web.stop()


def test_a_port_in_use_is_named() -> None:
    web = WorkerWebServer("127.0.0.1", 0, WorkerMetrics(), lambda: True, lambda c: None)
    try:
        with pytest.raises(WebPortError, match=rf"127\.0\.0\.1:{web.port} \(KAIROS_WEB_HOST"):
            WorkerWebServer("127.0.0.1", web.port, WorkerMetrics(), lambda: True, lambda c: None)
    finally:
        web.server.server_close()
