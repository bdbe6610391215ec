"""A team's backend for a browser frontend: it mints a token for the signed-in user on the server, and the page uses
the token with the gateway directly. The tenant key that mints (scope `mint`) never leaves this process.

    GATEWAY_URL=http://127.0.0.1:8000 GATEWAY_MINT_KEY=sk-gw-... python examples/frontend/server.py  # then :8080

The tenant must allow this page's origin (PATCH /admin/v1/tenants/{id} {"cors_origins": ["http://127.0.0.1:8080"]}).
Standard library only.
"""

from __future__ import annotations

import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = (Path(__file__).parent / "index.html").read_bytes()


def mint(gateway: str, mint_key: str, end_user: str, origin: str) -> dict[str, object]:
    """POST /v1/tokens with the team's key: a token for one end user, for this page's origin only."""
    body = {"end_user": end_user, "ttl_seconds": 900, "images_per_day": 20, "origins": [origin]}
    request = urllib.request.Request(
        f"{gateway}/v1/tokens",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {mint_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        minted: dict[str, object] = json.load(answer)
    return minted


def make_server(port: int, gateway: str, mint_key: str, origin: str | None = None) -> ThreadingHTTPServer:
    """The backend on 127.0.0.1:`port`; `origin`: where browsers load the page (default: that address)."""
    page_origin = origin or f"http://127.0.0.1:{port}"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the page
            self._send(200, "text/html; charset=utf-8", PAGE)

        def do_POST(self) -> None:  # the page asks for its token
            if self.path != "/token":
                self._send(404, "text/plain", b"not found")
                return
            user = "user-1"  # your own session's user id: whoever is signed in here
            minted = mint(gateway, mint_key, user, page_origin)
            answer = {"token": minted["token"], "expires_at": minted["expires_at"], "gateway": gateway}
            self._send(200, "application/json", json.dumps(answer).encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    gateway = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000").rstrip("/")
    server = make_server(port, gateway, os.environ["GATEWAY_MINT_KEY"], os.environ.get("PUBLIC_ORIGIN"))
    print(f"http://127.0.0.1:{port}/ (gateway {gateway})")
    server.serve_forever()
