#!/usr/bin/env python3
"""Token service for the short-token mode (bench/run.sh --token-lifetime N). Stdlib only.

The fake Medusa upstream (nginx, conf/upstream-nginx-short-token.conf.in) forwards two
things here; the data path itself never touches Python:

  POST /admin/auth/token -> 200 {"access_token": JWT}: a fresh HS256 JWT with
                            iat = now, exp = iat + N (whole seconds, as Medusa issues them)
                            and a unique jti. Every login is logged. Before answering, it
                            sends one GET --prime-url with the new token through nginx, so
                            nginx's verdict cache already holds the token when the proxy
                            starts using it (otherwise every connection's first request with
                            it would miss the cache at once and queue here).
  GET  /verify           -> nginx's auth_request subrequest, with the client's
                            Authorization header. 200 if it is "Bearer <JWT>" signed with
                            the secret and now < exp, else 401. nginx caches the verdict per
                            Authorization value: a valid one until exp (X-Accel-Expires
                            @exp-1: nginx's cache has 1-second resolution and treats an
                            entry as fresh through its last second), a rejection for an
                            hour (a token never becomes valid again). So each token is
                            verified here about once, and nginx answers 401 by itself as
                            soon as a token has expired.
  GET  /health           -> 200

Log (--log), one tab-separated line per event, flushed at once:
  login   <unix time> <iat> <exp> <jti>
  prime   <unix time> <HTTP status or error> <exp> <jti>
  verify  <unix time> <verdict: ok|expired|bad> <exp or -> <jti or ->

Usage: lib/token_service.py --port P --lifetime N --log FILE [--secret S] [--prime-url URL]
"""
import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jwt  # noqa: E402  (bench/lib/jwt.py)


class Service:
    def __init__(self, secret: str, lifetime: int, log_path: str, prime_url: str):
        self.secret = secret
        self.prime_url = prime_url
        self.lifetime = lifetime
        self.lock = threading.Lock()
        self.counter = 0
        self.log = open(log_path, "a", buffering=1)

    def record(self, *fields) -> None:
        with self.lock:
            self.log.write("\t".join(str(f) for f in fields) + "\n")

    def mint(self) -> str:
        now = time.time()
        iat = int(now)
        with self.lock:
            self.counter += 1
            jti = f"bench-{self.counter}"
        token = jwt.make_token(self.secret, iat=iat, exp=iat + self.lifetime, jti=jti)
        self.record("login", f"{now:.6f}", iat, iat + self.lifetime, jti)
        if self.prime_url:
            req = urllib.request.Request(self.prime_url, headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    result = str(resp.status)
            except urllib.error.HTTPError as e:
                result = str(e.code)
            except OSError as e:
                result = type(e).__name__
            self.record("prime", f"{time.time():.6f}", result, iat + self.lifetime, jti)
        return token


def make_handler(service: Service):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status: int, body: bytes = b"", headers=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path.split("?")[0] != "/admin/auth/token":
                return self.reply(404, b'{"type":"not_found"}')
            body = json.dumps({"access_token": service.mint()}).encode()
            self.reply(200, body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/health":
                return self.reply(200, b'{"status":"ok"}')
            if path != "/verify":
                return self.reply(404, b'{"type":"not_found"}')
            now = time.time()
            auth = self.headers.get("Authorization") or ""
            claims = jwt.verify(service.secret, auth[7:]) if auth.startswith("Bearer ") else None
            exp = claims.get("exp") if claims else None
            jti = claims.get("jti", "-") if claims else "-"
            if not isinstance(exp, (int, float)):
                service.record("verify", f"{now:.6f}", "bad", "-", jti)
                return self.reply(401, headers=[("X-Accel-Expires", "3600")])
            if now >= exp:
                service.record("verify", f"{now:.6f}", "expired", exp, jti)
                return self.reply(401, headers=[("X-Accel-Expires", "3600")])
            service.record("verify", f"{now:.6f}", "ok", exp, jti)
            return self.reply(200, headers=[("X-Accel-Expires", f"@{int(exp) - 1}")])

        def log_message(self, fmt, *args):  # no per-request stderr lines
            pass

    return Handler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--lifetime", type=int, required=True, help="token lifetime, seconds")
    ap.add_argument("--log", required=True)
    ap.add_argument("--secret", default="bench-secret")
    ap.add_argument("--prime-url", default="", help="GET this with each new token before answering")
    args = ap.parse_args()
    if args.lifetime < 1:
        ap.error("--lifetime must be at least 1")
    service = Service(args.secret, args.lifetime, args.log, args.prime_url)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(service))
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
