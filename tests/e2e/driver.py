#!/usr/bin/env python3
"""Drive admin work against a real Medusa, through medusa-auth-proxy or directly.

Python 3 standard library only. Each sub-command is one scenario; it prints what it measured,
a final `RESULT {json}` line, and exits 0 (pass) or 1 (fail).

How the client authenticates (--via):
  proxy        no credential at all: the proxy must supply it (the point of the suite)
  none         no credential, straight at Medusa: every admin call must be 401
  direct       the driver's own reference client (login, v2 refresh ahead, one re-login and
               replay on 401, v1 session cookie kept): proves the servers and the scenarios
               themselves before there is a proxy to put in front of them
  direct-nocookie  as direct, but never sends a cookie back (what a naive proxy does)

Login and refresh counts come from Medusa's own request log (one line per request in both
versions), so they do not depend on the proxy's log format; the proxy's log is counted too
when --proxy-log is given.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

# ---------------------------------------------------------------------------------------------
# output


def say(msg: str) -> None:
    print(f"[driver {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Checks:
    """Collects named assertions; a scenario passes when none failed."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed: list[str] = []
        self.figures: dict[str, object] = {}

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        line = what + (f" ({detail})" if detail else "")
        if ok:
            self.passed.append(line)
            say(f"  ok    {line}")
        else:
            self.failed.append(line)
            say(f"  FAIL  {line}")
        return ok

    def figure(self, key: str, value: object) -> None:
        self.figures[key] = value
        say(f"  figure {key} = {value}")

    def finish(self, scenario: str) -> int:
        status = "pass" if not self.failed else "fail"
        print(
            "RESULT "
            + json.dumps(
                {
                    "scenario": scenario,
                    "status": status,
                    "checks_passed": len(self.passed),
                    "checks_failed": self.failed,
                    "figures": self.figures,
                },
                sort_keys=True,
            ),
            flush=True,
        )
        say(f"{scenario}: {status} ({len(self.passed)} checks ok, {len(self.failed)} failed)")
        return 0 if not self.failed else 1


# ---------------------------------------------------------------------------------------------
# HTTP


class Resp:
    __slots__ = ("status", "headers", "body", "error", "elapsed", "t")

    def __init__(self, status, headers, body, error, elapsed, t):
        self.status = status  # 0 when no HTTP answer at all (connection refused, reset, ...)
        self.headers = headers  # list of (name, value)
        self.body = body
        self.error = error
        self.elapsed = elapsed
        self.t = t  # monotonic time the request was sent

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def all_headers(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        try:
            return json.loads(self.body)
        except (ValueError, TypeError):
            return None

    def brief(self) -> str:
        if self.status == 0:
            return f"no answer: {self.error}"
        return f"{self.status} {self.body[:160]!r}"


class Client:
    """Keep-alive HTTP/1.1 client, one connection per thread, optional auth and cookie jar."""

    def __init__(self, base: str, auth=None, cookie_jar: bool = False, timeout: float = 30.0):
        u = urllib.parse.urlsplit(base)
        if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"refusing {base}: the suite only talks to http on loopback")
        self.host = u.hostname
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self.local = threading.local()
        self.cookie_jar = cookie_jar
        self.cookie: str | None = None
        self.lock = threading.Lock()
        self.reconnects = 0
        self.set_cookies_seen = 0

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.local.conn = c
            self.local.used = False
        return c

    def _drop(self) -> None:
        c = getattr(self.local, "conn", None)
        if c is not None:
            c.close()
        self.local.conn = None

    def close(self) -> None:
        self._drop()

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Resp:
        hdrs = dict(headers or {})
        if self.cookie_jar and self.cookie:
            hdrs["Cookie"] = self.cookie
        t0 = time.monotonic()
        for attempt in (0, 1):
            conn = self._conn()
            reused = self.local.used
            try:
                conn.request(method, self.prefix + path, body=body, headers=hdrs)
                r = conn.getresponse()
                data = r.read()
                self.local.used = True
                hl = r.getheaders()
                if r.will_close:
                    self._drop()
                resp = Resp(r.status, hl, data, None, time.monotonic() - t0, t0)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # A keep-alive connection the server closed while idle: retry once on a fresh
                # one, like any HTTP client. A fresh connection failing is a real failure.
                self._drop()
                if reused and attempt == 0:
                    with self.lock:
                        self.reconnects += 1
                    continue
                resp = Resp(0, [], b"", f"{type(e).__name__}: {e}", time.monotonic() - t0, t0)
                break
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                resp = Resp(0, [], b"", f"{type(e).__name__}: {e}", time.monotonic() - t0, t0)
                break
        sc = resp.all_headers("set-cookie")
        if sc:
            with self.lock:
                self.set_cookies_seen += 1
                if self.cookie_jar and self.cookie is None:
                    self.cookie = sc[0].split(";", 1)[0]
        return resp

    def call(self, method: str, path: str, json_body=None, body: bytes | None = None,
             headers: dict | None = None) -> Resp:
        hdrs = {"Accept": "application/json"}
        hdrs.update(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        if self.auth is None:
            return self.raw(method, path, body, hdrs)
        t0 = time.monotonic()
        try:
            ah, tok = self.auth.headers()
            r = self.raw(method, path, body, {**hdrs, **ah})
            if r.status == 401 and tok is not None:
                # The reference behaviour the proxy implements: drop that token (only if it is
                # still the current one), get a new one, replay once.
                self.auth.rejected(tok)
                ah, tok = self.auth.headers()
                r = self.raw(method, path, body, {**hdrs, **ah})
        except NoToken as e:
            return Resp(0, [], b"", f"no token: {e}", time.monotonic() - t0, t0)
        return r


def jwt_exp(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, KeyError, ValueError, TypeError):
        return None


class NoToken(Exception):
    pass


class TokenAuth:
    """The driver's own credential handling for --via direct (a reference, not the product)."""

    def __init__(self, base: str, ver: str, email: str, password: str, margin: float = 2.0):
        self.c = Client(base)
        self.ver = ver
        self.email = email
        self.password = password
        self.margin = margin
        self.lock = threading.Lock()
        self.token: str | None = None
        self.exp = 0.0
        self.logins = 0
        self.refreshes = 0
        self.failures = 0
        self.retry_at = 0.0

    def _login(self) -> None:
        # One attempt; after a failure, callers fail fast (no token) for a short backoff
        # instead of queueing behind a retry loop: the reference for "503 at once, no storm".
        if time.monotonic() < self.retry_at:
            raise NoToken("login backing off")
        path, field = ("/admin/auth/token", "access_token") if self.ver == "v1" else ("/auth/user/emailpass", "token")
        r = self.c.call("POST", path, json_body={"email": self.email, "password": self.password})
        if r.status == 200 and isinstance(r.json(), dict) and field in r.json():
            self.logins += 1
            self.failures = 0
            self._set(r.json()[field])
            return
        if r.status in (400, 401):
            raise SystemExit(f"login rejected: {r.brief()}")
        self.failures += 1
        self.retry_at = time.monotonic() + min(0.25 * 2 ** self.failures, 2.0)
        raise NoToken(f"login failed: {r.brief()}")

    def _set(self, tok: str) -> None:
        self.token = tok
        exp = jwt_exp(tok)
        self.exp = exp if exp is not None else time.time() + 3600

    def _renew(self) -> None:
        if self.ver == "v2" and self.token is not None and time.time() < self.exp - 0.5:
            r = self.c.raw("POST", "/auth/token/refresh", b"", {"Authorization": f"Bearer {self.token}"})
            if r.status == 200 and isinstance(r.json(), dict) and "token" in r.json():
                self.refreshes += 1
                self._set(r.json()["token"])
                return
        self._login()

    def headers(self):
        with self.lock:
            lifetime_margin = self.margin
            if self.token is None or time.time() >= self.exp - lifetime_margin:
                self._renew()
            return {"Authorization": f"Bearer {self.token}"}, self.token

    def rejected(self, tok: str) -> None:
        with self.lock:
            if self.token == tok:
                self.token = None


class StaticAuth:
    def __init__(self, hdrs: dict):
        self.h = hdrs

    def headers(self):
        return dict(self.h), None

    def rejected(self, tok) -> None:  # nothing to renew
        pass


# ---------------------------------------------------------------------------------------------
# logs

ANSI = re.compile(r"\x1b\[[0-9;]*m")
V1_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')
V2_LINE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+) \S+ \S+ \((\d{3})\)")


class LogTail:
    """Counts lines appended to a log file since mark()."""

    def __init__(self, path: str | None):
        self.path = path
        self.pos = 0

    def mark(self) -> None:
        self.pos = os.path.getsize(self.path) if self.path and os.path.exists(self.path) else 0

    def new_lines(self) -> list[str]:
        if not self.path or not os.path.exists(self.path):
            return []
        time.sleep(0.3)  # let the writer flush its last line
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        return [ANSI.sub("", ln) for ln in data.decode("utf-8", "replace").splitlines()]


class MedusaLog(LogTail):
    def __init__(self, path: str | None, ver: str):
        super().__init__(path)
        self.ver = ver

    def counts(self) -> dict:
        c = collections.Counter()
        rx = V1_LINE if self.ver == "v1" else V2_LINE
        for ln in self.new_lines():
            m = rx.search(ln)
            if not m:
                continue
            method, path, status = m.group(1), m.group(2).split("?")[0], int(m.group(3))
            c["requests"] += 1
            if status == 401:
                c["401"] += 1
            if method == "POST" and path in ("/admin/auth/token", "/auth/user/emailpass"):
                c["logins"] += 1
                if status != 200:
                    c["logins_failed"] += 1
            if method == "POST" and path == "/admin/auth":
                c["cookie_logins"] += 1
            if method == "POST" and path == "/auth/token/refresh":
                c["refreshes"] += 1
                if status != 200:
                    c["refreshes_failed"] += 1
        for k in ("requests", "401", "logins", "logins_failed", "refreshes", "refreshes_failed", "cookie_logins"):
            c.setdefault(k, 0)
        return dict(c)


class ProxyLog(LogTail):
    """The proxy logs a line per login and per refresh; counted loosely (format may evolve)."""

    def counts(self) -> dict:
        c = collections.Counter({"token_obtained": 0, "kind_login": 0, "kind_refresh": 0, "login_failed": 0})
        for ln in self.new_lines():
            low = ln.lower()
            if "obtained a medusa token" in low or "token obtained" in low:
                c["token_obtained"] += 1
                if re.search(r'kind\W{1,3}refresh', low):
                    c["kind_refresh"] += 1
                elif re.search(r'kind\W{1,3}login', low):
                    c["kind_login"] += 1
            if "login to medusa failed" in low or "refresh failed" in low:
                c["login_failed"] += 1
        return dict(c)


# ---------------------------------------------------------------------------------------------
# building blocks


def make_client(args, base: str | None = None, cookie_jar: bool | None = None) -> Client:
    via = args.via
    base = base or (args.proxy if via == "proxy" else args.medusa)
    if not base:
        raise SystemExit(f"--via {via} needs {'--proxy' if via == 'proxy' else '--medusa'}")
    if via in ("proxy", "none"):
        return Client(base)
    if via in ("direct", "direct-nocookie"):
        if args.api_key_file:
            key = open(args.api_key_file).read().strip()
            if args.ver == "v1":
                auth = StaticAuth({"x-medusa-access-token": key})
            else:
                auth = StaticAuth({"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()})
        else:
            auth = TokenAuth(args.medusa, args.ver, args.email, password(args), margin=args.margin)
        jar = (via == "direct") if cookie_jar is None else cookie_jar
        return Client(base, auth=auth, cookie_jar=jar and args.ver == "v1")
    raise SystemExit(f"unknown --via {via}")


def password(args) -> str:
    pw = os.environ.get(args.password_env or "")
    if not pw:
        raise SystemExit(f"--via direct needs the admin password in ${args.password_env}")
    return pw


def driver_logins(client: Client) -> int:
    a = client.auth
    return getattr(a, "logins", 0) if a else 0


def multipart(field: str, filename: str, content: bytes, ctype: str = "text/plain"):
    boundary = "e2e" + uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def is_json_error(r: Resp) -> bool:
    j = r.json()
    ctype = (r.header("content-type") or "").lower()
    return isinstance(j, dict) and "error" in j and "json" in ctype


def wait_ready(args, checks: Checks | None = None, seconds: float = 60) -> bool:
    """Wait for the proxy's /readyz (when --ops is given)."""
    if not args.ops:
        return True
    ops = Client(args.ops)
    deadline = time.monotonic() + seconds
    r = None
    while time.monotonic() < deadline:
        r = ops.raw("GET", "/readyz")
        if r.status == 200:
            return True
        time.sleep(0.1)
    if checks:
        checks.check(False, "proxy /readyz becomes 200", r.brief() if r else "no answer")
    return False


class Traffic:
    """Steady paced traffic from N threads; records every request's (time, status, body)."""

    def __init__(self, client: Client, concurrency: int, interval: float, writes: bool, ver: str):
        self.client = client
        self.n = concurrency
        self.interval = interval
        self.writes = writes
        self.ver = ver
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[float, str, int, bytes]] = []  # (t, kind, status, body-snippet)
        self.threads: list[threading.Thread] = []

    def _rec(self, r: Resp, kind: str) -> None:
        with self.lock:
            self.records.append((r.t, kind, r.status, r.body[:300] if r.status != 200 else b""))

    def _worker(self, i: int) -> None:
        k = 0
        while not self.stop.is_set():
            k += 1
            if self.writes and i == 0 and k % 5 == 0:
                self._write_cycle()
            else:
                r = self.client.call("GET", f"/admin/products?limit=5&offset={k % 3}")
                self._rec(r, "GET")
            if self.interval:
                self.stop.wait(self.interval * (0.5 + random.random()))
        self.client.close()

    def _write_cycle(self) -> None:
        title = f"e2e-soak-{uuid.uuid4().hex[:8]}"
        r = self.client.call("POST", "/admin/products", json_body=product_body(self.ver, title))
        self._rec(r, "POST")
        pid = (r.json() or {}).get("product", {}).get("id") if r.status == 200 else None
        if pid:
            r = self.client.call("POST", f"/admin/products/{pid}", json_body={"title": title + "-u"})
            self._rec(r, "POST")
            r = self.client.call("DELETE", f"/admin/products/{pid}")
            self._rec(r, "DELETE")

    def start(self) -> None:
        for i in range(self.n):
            t = threading.Thread(target=self._worker, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def summary(self, since: float = 0.0, until: float = float("inf")) -> collections.Counter:
        with self.lock:
            return collections.Counter(s for (t, _k, s, _b) in self.records if since <= t < until)


def product_body(ver: str, title: str) -> dict:
    if ver == "v1":
        return {"title": title, "description": "made by the e2e suite"}
    return {"title": title, "description": "made by the e2e suite",
            "options": [{"title": "Size", "values": ["One"]}]}


def fmt_counter(c) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))) or "none"


def run_ctl(args, *cmd: str) -> float:
    t0 = time.monotonic()
    say(f"  $ ctl.sh {' '.join(cmd)}")
    p = subprocess.run([args.ctl, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for ln in p.stdout.splitlines():
        say(f"    {ln}")
    if p.returncode != 0:
        raise SystemExit(f"ctl.sh {' '.join(cmd)} failed with {p.returncode}")
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# scenarios


def sc_crud(args) -> int:
    """List, create, update, get, delete a product; a 404; a DELETE with a JSON body; an upload.
    With --unauth, repeat every call straight at Medusa with no credential: each must be 401."""
    ck = Checks()
    c = make_client(args)
    ver = args.ver
    mlog = MedusaLog(args.medusa_log, ver)
    mlog.mark()
    if not wait_ready(args, ck):
        return ck.finish("crud")
    calls: list[tuple[str, str, dict]] = []  # replayed without credentials at the end
    title = f"e2e-crud-{uuid.uuid4().hex[:8]}"

    def do(method, path, **kw):
        r = c.call(method, path, **kw)
        calls.append((method, path, kw))
        return r

    r = do("GET", "/admin/products?limit=5")
    ck.check(r.status == 200 and isinstance((r.json() or {}).get("products"), list),
             "list products -> 200 with a products array", r.brief() if r.status != 200 else f"count={r.json().get('count')}")
    if args.via == "proxy":
        ck.check(not r.all_headers("set-cookie"), "no Set-Cookie reaches the client", ";".join(r.all_headers("set-cookie")))

    r = do("POST", "/admin/products", json_body=product_body(ver, title))
    prod = (r.json() or {}).get("product") or {}
    pid = prod.get("id")
    ck.check(r.status == 200 and bool(pid) and prod.get("title") == title, "create product -> 200", r.brief() if not pid else pid)
    if not pid:
        return ck.finish("crud")

    r = do("POST", f"/admin/products/{pid}", json_body={"title": title + "-updated", "subtitle": "e2e"})
    ck.check(r.status == 200 and (r.json() or {}).get("product", {}).get("title") == title + "-updated",
             "update product -> 200, new title", r.brief() if r.status != 200 else "")

    r = do("GET", f"/admin/products/{pid}")
    ck.check(r.status == 200 and (r.json() or {}).get("product", {}).get("subtitle") == "e2e",
             "get product -> 200, update visible", r.brief() if r.status != 200 else "")

    r = do("GET", f"/admin/products/prod_e2e_missing_{uuid.uuid4().hex[:6]}")
    j = r.json() or {}
    ck.check(r.status == 404 and j.get("type") == "not_found", "unknown product -> 404 passed through with Medusa's body", r.brief())

    # A DELETE with a JSON body.
    if ver == "v1":
        r = do("POST", "/admin/collections", json_body={"title": title + "-coll"})
        cid = (r.json() or {}).get("collection", {}).get("id")
        ck.check(r.status == 200 and bool(cid), "create collection -> 200", r.brief() if not cid else cid)
        if cid:
            r = do("POST", f"/admin/collections/{cid}/products/batch", json_body={"product_ids": [pid]})
            n_in = len((r.json() or {}).get("collection", {}).get("products", []) or [])
            ck.check(r.status == 200 and n_in == 1, "add product to collection -> 200", r.brief() if r.status != 200 else "")
            r = do("DELETE", f"/admin/collections/{cid}/products/batch", json_body={"product_ids": [pid]})
            j = r.json() or {}
            ck.check(r.status == 200 and j.get("removed_products") == [pid],
                     "DELETE with JSON body {product_ids} -> 200 and Medusa read the body", r.brief())
            r = do("GET", f"/admin/products/{pid}")
            ck.check(r.status == 200 and (r.json() or {}).get("product", {}).get("collection_id") is None,
                     "product no longer in the collection", r.brief() if r.status != 200 else "")
            r = do("DELETE", f"/admin/collections/{cid}")
            ck.check(r.status == 200, "delete collection -> 200", r.brief())
    else:
        # v2 has no DELETE-with-body route that works without feature flags; this one validates
        # its body strictly before looking anything up, so Medusa naming our probe field proves
        # the body arrived intact. (A made-up user id: the proxy denies writes to its own user.)
        probe = f"e2e_probe_{uuid.uuid4().hex[:6]}"
        r = do("DELETE", "/admin/users/user_e2e_nobody/roles", json_body={probe: True})
        msg = (r.json() or {}).get("message", "")
        ck.check(r.status == 400 and probe in msg,
                 "DELETE with JSON body -> Medusa validated our body (400 naming the probe field)", r.brief())

    # A multipart upload (v1: @medusajs/file-local; v2: its default local file provider).
    content = f"e2e upload {uuid.uuid4().hex}\n".encode() * 200
    body, ctype = multipart("files", "e2e-upload.txt", content)
    r = do("POST", "/admin/uploads", body=body, headers={"Content-Type": ctype})
    j = r.json() or {}
    if ver == "v1":
        up = (j.get("uploads") or [{}])[0]
        key, url = up.get("key"), up.get("url")
    else:
        up = (j.get("files") or [{}])[0]
        key, url = up.get("id"), up.get("url")
    ck.check(r.status == 200 and bool(key), f"multipart upload ({len(content)} bytes) -> 200", r.brief() if not key else key)
    if key:
        stored = os.path.join(args.medusa_dir, "uploads" if ver == "v1" else "static", key) if args.medusa_dir else None
        if stored:
            ok = os.path.exists(stored) and open(stored, "rb").read() == content
            ck.check(ok, "uploaded file stored byte for byte", stored)
        if ver == "v1":
            r = do("DELETE", "/admin/uploads", json_body={"file_key": key})
            ck.check(r.status == 200 and (r.json() or {}).get("deleted") is True,
                     "DELETE /admin/uploads with JSON body {file_key} -> 200 deleted", r.brief())
            if stored:
                ck.check(not os.path.exists(stored), "file-local removed the file", stored)

    r = do("DELETE", f"/admin/products/{pid}")
    j = r.json() or {}
    ck.check(r.status == 200 and j.get("id") == pid and j.get("deleted") is True, "delete product -> 200 deleted", r.brief())
    r = do("GET", f"/admin/products/{pid}")
    ck.check(r.status == 404, "deleted product -> 404", r.brief())

    if args.unauth:
        bare = Client(args.unauth)
        statuses = collections.Counter()
        for method, path, kw in calls:
            r = bare.call(method, path, **kw)
            statuses[r.status] += 1
            if r.status != 401:
                ck.check(False, f"without credentials, straight at Medusa: {method} {path} -> 401", r.brief())
        ck.check(statuses == collections.Counter({401: len(calls)}),
                 f"the same {len(calls)} calls straight at Medusa without credentials -> all 401", fmt_counter(statuses))
        ck.figure("direct_unauthenticated_statuses", dict(statuses))

    m = mlog.counts()
    ck.figure("medusa_log", m)
    ck.figure("calls", len(calls))
    if args.via == "proxy" and args.expect_logins is not None:
        ck.check(m["logins"] <= args.expect_logins, f"Medusa saw at most {args.expect_logins} logins", str(m["logins"]))
    return ck.finish("crud")


def sc_soak(args) -> int:
    """Steady traffic for --seconds; zero failures; with short v2 tokens, refreshes not logins."""
    ck = Checks()
    c = make_client(args)
    mlog, plog = MedusaLog(args.medusa_log, args.ver), ProxyLog(args.proxy_log)
    if not wait_ready(args, ck):
        return ck.finish("soak")
    warm_up(c, ck)
    mlog.mark()
    plog.mark()
    tr = Traffic(c, args.concurrency, args.interval, writes=True, ver=args.ver)
    t0 = time.monotonic()
    tr.start()
    last = t0
    while time.monotonic() - t0 < args.seconds:
        time.sleep(1)
        if time.monotonic() - last >= 15:
            last = time.monotonic()
            s = tr.summary()
            say(f"  {last - t0:5.0f}s  requests {sum(s.values())}, statuses {fmt_counter(s)}")
    tr.finish()
    dur = time.monotonic() - t0
    s = tr.summary()
    total = sum(s.values())
    bad = total - s.get(200, 0)
    m = mlog.counts()
    p = plog.counts()
    ck.figure("seconds", round(dur, 1))
    ck.figure("requests", total)
    ck.figure("requests_per_second", round(total / dur, 1))
    ck.figure("statuses", dict(s))
    ck.figure("medusa_log", m)
    if args.proxy_log:
        ck.figure("proxy_log", p)
    if args.via.startswith("direct"):
        ck.figure("driver_logins", driver_logins(c))
    ck.check(total > 0 and bad == 0, f"{total} requests, zero failed", "" if not bad else sample_failures(tr))
    ck.check(m["401"] == 0, "Medusa answered no request with 401", str(m["401"]))
    if args.min_refreshes:
        ck.check(m["refreshes"] >= args.min_refreshes and m["refreshes_failed"] == 0,
                 f"token refreshed at least {args.min_refreshes} times (POST /auth/token/refresh in Medusa's log), none failed",
                 f"{m['refreshes']} refreshes, {m['refreshes_failed']} failed")
    if args.max_logins is not None:
        ck.check(m["logins"] <= args.max_logins, f"at most {args.max_logins} logins during the soak", str(m["logins"]))
    return ck.finish("soak")


def warm_up(c: Client, ck: Checks) -> None:
    """One request before the counting starts (the direct client logs in on its first one)."""
    r = c.call("GET", "/admin/products?limit=1")
    ck.check(r.status == 200, "a first request succeeds", r.brief() if r.status != 200 else "")


def sample_failures(tr: Traffic, n: int = 5) -> str:
    with tr.lock:
        bad = [(k, s, b) for (_t, k, s, b) in tr.records if s != 200][:n]
    return "; ".join(f"{k} {s} {b[:120]!r}" for k, s, b in bad)


def burst(c: Client, n: int) -> collections.Counter:
    """n concurrent idempotent GETs, released at once."""
    res = collections.Counter()
    lock = threading.Lock()
    gate = threading.Barrier(n)
    samples: list[str] = []

    def one(i: int) -> None:
        gate.wait()
        r = c.call("GET", f"/admin/products?limit=1&offset={i % 3}")
        with lock:
            res[r.status] += 1
            if r.status != 200 and len(samples) < 3:
                samples.append(r.brief())
        c.close()

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    res["_samples"] = samples  # type: ignore[assignment]
    return res


def sc_rotate(args) -> int:
    """Restart Medusa with a different JWT secret: every cached token now gets 401. A burst of
    idempotent requests and then steady traffic must all succeed, with exactly one login."""
    ck = Checks()
    c = make_client(args)
    mlog, plog = MedusaLog(args.medusa_log, args.ver), ProxyLog(args.proxy_log)
    if not wait_ready(args, ck):
        return ck.finish("rotate")
    r = c.call("GET", "/admin/products?limit=1")
    ck.check(r.status == 200, "traffic works before the rotation", r.brief() if r.status != 200 else "")
    new_secret = f"e2e-jwt-{args.ver}-rotated-{uuid.uuid4().hex[:8]}"
    run_ctl(args, "stop", f"medusa-{args.ver}")
    run_ctl(args, "start-medusa", args.ver, "--jwt-secret", new_secret)
    mlog.mark()
    plog.mark()
    if args.via == "proxy" and args.ops:
        # The proxy still holds the old token, valid by its exp: it must still say ready.
        r = Client(args.ops).raw("GET", "/readyz")
        ck.figure("readyz_after_restart", r.status)
    res = burst(c, args.burst)
    samples = res.pop("_samples")
    ck.check(res == collections.Counter({200: args.burst}),
             f"burst of {args.burst} concurrent GETs right after the rotation -> all 200", f"{fmt_counter(res)} {samples}")
    tr = Traffic(c, args.concurrency, args.interval, writes=False, ver=args.ver)
    tr.start()
    time.sleep(args.seconds)
    tr.finish()
    s = tr.summary()
    ck.check(sum(s.values()) > 0 and set(s) == {200}, f"{sum(s.values())} further GETs -> all 200", fmt_counter(s))
    m = mlog.counts()
    p = plog.counts()
    ck.figure("medusa_log", m)
    if args.proxy_log:
        ck.figure("proxy_log", p)
    logins = m["logins"]
    if args.via.startswith("direct"):
        ck.figure("driver_logins", driver_logins(c))
    ck.check(logins == 1, "exactly one login after the rotation (Medusa's log)", str(logins))
    ck.check(m["401"] >= 1, "Medusa did reject the old token (401s in its log)", str(m["401"]))
    return ck.finish("rotate")


def sc_outage(args) -> int:
    """Stop Medusa mid-traffic, keep it down, start it again: clear 502s (JSON) while down,
    all 200 again soon after it is back, and no login storm."""
    ck = Checks()
    c = make_client(args)
    mlog, plog = MedusaLog(args.medusa_log, args.ver), ProxyLog(args.proxy_log)
    if not wait_ready(args, ck):
        return ck.finish("outage")
    warm_up(c, ck)
    mlog.mark()
    plog.mark()
    tr = Traffic(c, args.concurrency, args.interval, writes=False, ver=args.ver)
    tr.start()
    time.sleep(3)
    t_stop = time.monotonic()
    run_ctl(args, "stop", f"medusa-{args.ver}")
    t_down = time.monotonic()
    time.sleep(args.down_seconds)
    t_start = time.monotonic()
    run_ctl(args, "start-medusa", args.ver)
    t_up = time.monotonic()
    time.sleep(args.after_seconds)
    tr.finish()

    before = tr.summary(until=t_stop)
    stopping = tr.summary(t_stop, t_down)
    down = tr.summary(t_down, t_start)
    starting = tr.summary(t_start, t_up)
    after = tr.summary(t_up)
    # Time from "Medusa answers /health" to the first request that got 200 and after which
    # every request got 200.
    with tr.lock:
        recs = sorted((t, s) for (t, _k, s, _b) in tr.records if t >= t_up)
    recovered_at = None
    for t, s in recs:
        if s == 200 and recovered_at is None:
            recovered_at = t
        elif s != 200:
            recovered_at = None
    ck.figure("down_seconds", round(t_start - t_down, 1))
    ck.figure("medusa_restart_to_health_seconds", round(t_up - t_start, 1))
    ck.figure("statuses_before", dict(before))
    ck.figure("statuses_while_stopping", dict(stopping))
    ck.figure("statuses_while_down", dict(down))
    ck.figure("statuses_while_starting", dict(starting))
    ck.figure("statuses_after_up", dict(after))
    ck.check(sum(before.values()) > 0 and set(before) == {200}, "all 200 before the outage", fmt_counter(before))
    transition_ok = {200, 502, 503, 504} if args.via == "proxy" else {200, 0}
    trans = stopping + starting
    ck.check(set(trans) <= transition_ok, f"while Medusa stops and starts, only {sorted(transition_ok)}", fmt_counter(trans))
    down_ok = {502} if args.via == "proxy" else {0}
    if args.allow_503_while_down and args.via == "proxy":
        down_ok = {502, 503}
    ck.check(sum(down.values()) > 0 and set(down) <= down_ok,
             f"while Medusa is down every request gets {sorted(down_ok)}", fmt_counter(down))
    if args.via == "proxy":
        ck.check(down.get(502, 0) > 0, "at least one 502 while down", fmt_counter(down))
        with tr.lock:
            bodies = [b for (t, _k, s, b) in tr.records if s == 502][:50]
        ok_bodies = [b for b in bodies if _is_error_json(b)]
        ck.check(len(bodies) > 0 and len(ok_bodies) == len(bodies), "502 bodies are JSON errors",
                 (bodies[0][:160].decode("utf-8", "replace") if bodies else "none"))
    ck.check(recovered_at is not None, "traffic recovered: every request after some point got 200", fmt_counter(after))
    if recovered_at is not None:
        rec = max(0.0, recovered_at - t_up)
        ck.figure("recovery_seconds_after_health", round(rec, 2))
        ck.check(rec <= args.max_recovery, f"recovered within {args.max_recovery}s of Medusa answering /health", f"{rec:.2f}s")
    m = mlog.counts()
    p = plog.counts()
    ck.figure("medusa_log", m)
    if args.proxy_log:
        ck.figure("proxy_log", p)
    ck.check(m["logins"] <= args.max_logins, f"no login storm: at most {args.max_logins} logins reached Medusa", str(m["logins"]))
    if args.proxy_log:
        ck.check(p["login_failed"] <= args.max_failed_logins,
                 f"proxy made at most {args.max_failed_logins} failed login attempts while Medusa was down", str(p["login_failed"]))
    return ck.finish("outage")


def _is_error_json(b: bytes) -> bool:
    try:
        j = json.loads(b)
    except ValueError:
        return False
    return isinstance(j, dict) and "error" in j


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def mem_probe(pid: int, statfile: str | None) -> dict:
    """VmRSS as is, and (when Medusa runs with tests/e2e/lib/preload-v1.js and --expose-gc)
    VmRSS and V8's heapUsed right after a full garbage collection triggered with SIGUSR2."""
    out = {"rss_raw_kib": rss_kib(pid)}
    if not statfile:
        return out
    try:
        prev = json.load(open(statfile))
        old = prev.get("seq", 0) if prev.get("pid") == pid else 0
    except (OSError, ValueError):
        old = 0
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            j = json.load(open(statfile))
        except (OSError, ValueError):
            continue
        if j.get("seq", 0) > old and j.get("pid") == pid:
            out["rss_gc_kib"] = (j.get("vmrss") or j["rss"]) // 1024
            out["heap_used_gc_kib"] = j["heapUsed"] // 1024
            out["sessions"] = j.get("sessions")
            return out
    raise SystemExit(f"Medusa (pid {pid}) did not answer the memory probe in {statfile}")


def pump(c: Client, n: int, concurrency: int, path: str) -> collections.Counter:
    res = collections.Counter()
    lock = threading.Lock()
    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    def w(k: int) -> None:
        local = collections.Counter()
        for _ in range(k):
            r = c.call("GET", path)
            local[r.status] += 1
        c.close()
        with lock:
            res.update(local)

    ts = [threading.Thread(target=w, args=(k,)) for k in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return res


def sc_rss(args) -> int:
    """v1: Medusa's memory after N requests through the client under test, versus N cookie-less
    Bearer requests straight at Medusa (what a proxy that ignores the session cookie causes:
    express-session keeps one MemoryStore session per cookie-less request, for 10 hours).

    Raw RSS swings by tens of MB with V8's heap sizing whatever the traffic, so the verdict uses
    memory retained after a full GC (heapUsed, and VmRSS, right after gc()); raw RSS is printed
    too."""
    ck = Checks()
    pid = args.medusa_pid
    statfile = args.memstat_file
    path = args.rss_path
    c = make_client(args)
    if not wait_ready(args, ck):
        return ck.finish("rss")
    n = args.requests
    # Warm up Medusa's code paths and heap first so that JIT and caches do not count.
    warm = pump(c, args.warmup, args.concurrency, path)
    m0 = mem_probe(pid, statfile)
    t0 = time.monotonic()
    s = pump(c, n, args.concurrency, path)
    dt = time.monotonic() - t0
    m1 = mem_probe(pid, statfile)
    ck.check(set(s) == {200} and set(warm) == {200}, f"{n} requests via {args.via} -> all 200", fmt_counter(s))
    # Baseline: the same requests straight at Medusa with a Bearer token and no cookie.
    bl = Client(args.medusa, auth=TokenAuth(args.medusa, "v1", args.email, password(args)), cookie_jar=False)
    t1 = time.monotonic()
    sb = pump(bl, n, args.concurrency, path)
    dtb = time.monotonic() - t1
    m2 = mem_probe(pid, statfile)
    ck.check(set(sb) == {200}, f"{n} cookie-less Bearer requests straight at Medusa -> all 200", fmt_counter(sb))
    ck.check(bl.set_cookies_seen >= n, "Medusa handed the cookie-less client a new session every time",
             f"{bl.set_cookies_seen} Set-Cookie")
    mib = lambda kib: round(kib / 1024, 2)  # noqa: E731
    ck.figure("requests_per_phase", n)
    ck.figure("endpoint", path)
    ck.figure("medusa_rss_raw_mib", [mib(m["rss_raw_kib"]) for m in (m0, m1, m2)])
    ck.figure(f"rss_raw_growth_mib_{args.via}", mib(m1["rss_raw_kib"] - m0["rss_raw_kib"]))
    ck.figure("rss_raw_growth_mib_cookieless", mib(m2["rss_raw_kib"] - m1["rss_raw_kib"]))
    ck.figure(f"req_per_s_{args.via}", round(n / dt, 1))
    ck.figure("req_per_s_cookieless", round(n / dtb, 1))
    if "heap_used_gc_kib" not in m0:
        say("  WARNING: no memory probe (Medusa not started by ctl.sh?): judging raw RSS, which is noisy")
        g_test, g_base = m1["rss_raw_kib"] - m0["rss_raw_kib"], m2["rss_raw_kib"] - m1["rss_raw_kib"]
        ck.check(g_test <= max(g_base * 0.5, 0), f"raw RSS growth via {args.via} <= half the cookie-less growth",
                 f"{mib(g_test)} vs {mib(g_base)} MiB")
        return ck.finish("rss")
    ck.figure("medusa_rss_after_gc_mib", [mib(m["rss_gc_kib"]) for m in (m0, m1, m2)])
    ck.figure(f"rss_after_gc_growth_mib_{args.via}", mib(m1["rss_gc_kib"] - m0["rss_gc_kib"]))
    ck.figure("rss_after_gc_growth_mib_cookieless", mib(m2["rss_gc_kib"] - m1["rss_gc_kib"]))
    ck.figure("heap_used_after_gc_mib", [mib(m["heap_used_gc_kib"]) for m in (m0, m1, m2)])
    h_test = (m1["heap_used_gc_kib"] - m0["heap_used_gc_kib"]) * 1024
    h_base = (m2["heap_used_gc_kib"] - m1["heap_used_gc_kib"]) * 1024
    ck.figure(f"retained_heap_growth_mib_{args.via}", round(h_test / 2**20, 2))
    ck.figure("retained_heap_growth_mib_cookieless", round(h_base / 2**20, 2))
    ck.figure(f"retained_bytes_per_request_{args.via}", round(h_test / n))
    ck.figure("retained_bytes_per_request_cookieless", round(h_base / n))
    # The deterministic measure: how many sessions Medusa's MemoryStore holds.
    if m0.get("sessions") is not None:
        s_test = m1["sessions"] - m0["sessions"]
        s_base = m2["sessions"] - m1["sessions"]
        ck.figure("medusa_sessions", [m["sessions"] for m in (m0, m1, m2)])
        ck.figure(f"new_sessions_{args.via}", s_test)
        ck.figure("new_sessions_cookieless", s_base)
        ck.check(s_base >= n, f"the cookie-less baseline added a session per request ({n})", str(s_base))
        ck.check(s_test <= args.max_new_sessions,
                 f"{n} requests via {args.via} added at most {args.max_new_sessions} sessions to Medusa's store", str(s_test))
    # Heap after GC is a measurement, with a bound loose enough for JIT warm-up noise (~0.5 MiB).
    ck.check(h_base / n >= args.min_baseline_bytes,
             f"the cookie-less baseline retained >= {args.min_baseline_bytes} B/request after GC (the leak is visible)",
             f"{h_base / n:.0f} B/request")
    ck.check(h_test <= h_base * args.max_ratio,
             f"Medusa's retained heap grows far less via {args.via} than cookie-less: <= {args.max_ratio:.0%} of it",
             f"{h_test / 2**20:.2f} MiB ({h_test / n:.0f} B/request) vs {h_base / 2**20:.2f} MiB ({h_base / n:.0f} B/request)")
    return ck.finish("rss")


def sc_mkkey(args) -> int:
    """Create a static credential with a token fetched here; write it to --out (mode 600)."""
    ck = Checks()
    auth = TokenAuth(args.medusa, args.ver, args.email, password(args))
    c = Client(args.medusa, auth=auth, cookie_jar=args.ver == "v1")
    if args.ver == "v1":
        me = c.call("GET", "/admin/auth")
        uid = (me.json() or {}).get("user", {}).get("id")
        ck.check(me.status == 200 and bool(uid), "GET /admin/auth -> the admin user", me.brief() if not uid else uid)
        key = "e2e_" + uuid.uuid4().hex
        r = c.call("POST", f"/admin/users/{uid}", json_body={"api_token": key})
        ck.check(r.status == 200, "set the user's api_token", r.brief() if r.status != 200 else "")
        test = Client(args.medusa).call("GET", "/admin/products?limit=1", headers={"x-medusa-access-token": key})
    else:
        r = c.call("POST", "/admin/api-keys", json_body={"title": f"e2e {uuid.uuid4().hex[:6]}", "type": "secret"})
        key = (r.json() or {}).get("api_key", {}).get("token", "")
        ck.check(r.status == 200 and key.startswith("sk_"), "create a secret API key", r.brief() if not key else "sk_…")
        basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        test = Client(args.medusa).call("GET", "/admin/products?limit=1", headers={"Authorization": basic})
    ck.check(test.status == 200, "the new key works straight at Medusa", test.brief())
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return ck.finish("mkkey")


def _fields(v, name: str) -> list:
    """Every value of a JSON field called `name`, at any depth."""
    out = []
    if isinstance(v, dict):
        for k, x in v.items():
            if k == name:
                out.append(x)
            out.extend(_fields(x, name))
    elif isinstance(v, list):
        for x in v:
            out.extend(_fields(x, name))
    return out


def sc_creds(args) -> int:
    """No credential read or minted through the proxy (issue 12). Straight at Medusa, with a
    token fetched here: give users a static api_token (v1: the admin and a new user) and
    create an invite, then read GET /admin/auth (v1), /admin/users and /admin/invites through
    the client under test and find none of those values in the bytes; try to set another
    user's api_token through it (403, and Medusa's value unchanged). With --via direct the
    same reads must show the secrets (the scenario is real)."""
    ck = Checks()
    ver = args.ver
    if not wait_ready(args, ck):
        return ck.finish("creds")
    direct = Client(args.medusa, auth=TokenAuth(args.medusa, ver, args.email, password(args)),
                    cookie_jar=ver == "v1")
    c = make_client(args)
    tag = uuid.uuid4().hex[:8]
    other = None
    if ver == "v1":
        me = direct.call("GET", "/admin/auth")
        uid = (me.json() or {}).get("user", {}).get("id")
        ck.check(me.status == 200 and bool(uid), "direct GET /admin/auth -> the admin", me.brief())
        r = direct.call("POST", "/admin/users", json_body={
            "email": f"creds-{tag}@example.com", "password": f"pw-{uuid.uuid4().hex}", "role": "member"})
        other = ((r.json() or {}).get("user") or {}).get("id")
        ck.check(r.status == 200 and bool(other), "direct: create a second user", r.brief())
        for u in (uid, other):
            if u:
                r = direct.call("POST", f"/admin/users/{u}", json_body={"api_token": f"e2e_creds_{tag}_{u}"})
                ck.check(r.status == 200, f"direct: set {u}'s api_token", r.brief() if r.status != 200 else "")
        r = direct.call("POST", "/admin/invites", json_body={"user": f"invitee-{tag}@example.com", "role": "member"})
    else:
        r = direct.call("POST", "/admin/invites", json_body={"email": f"invitee-{tag}@example.com"})
    ck.check(r.status == 200, "direct: create an invite", r.brief() if r.status != 200 else "")

    paths = (["/admin/auth"] if ver == "v1" else []) + ["/admin/users", "/admin/invites"]
    secrets: set[str] = set()
    for path in paths:
        r = direct.call("GET", path)
        ck.check(r.status == 200, f"direct GET {path} -> 200", r.brief() if r.status != 200 else "")
        j = r.json()
        found = [x for x in _fields(j, "api_token") if isinstance(x, str) and x]
        if path == "/admin/invites":
            found += [x for x in _fields(j, "token") if isinstance(x, str) and x]
        secrets.update(found)
        ck.figure(f"direct_secrets{path.replace('/', '_')}", len(found))
    want = 2 + 1 if ver == "v1" else 1  # two api_tokens, at least one invite token
    ck.check(len(secrets) >= want, f"Medusa hands out credentials directly (>= {want} distinct values)",
             f"{len(secrets)} found")

    leaked = 0
    for path in paths:
        r = c.call("GET", path)
        hit = [x for x in secrets if x.encode() in r.body]
        leaked += len(hit)
        if args.via != "proxy":
            continue
        ck.check(r.status == 200, f"GET {path} via proxy -> 200", r.brief() if r.status != 200 else "")
        ck.check(not hit, f"GET {path} via proxy: no credential value in the body",
                 f"{len(hit)} of {len(secrets)} values present" if hit else f"{len(r.body)} bytes checked")
        j = r.json()
        names = ["api_token"] + (["token"] if path == "/admin/invites" else [])
        vals = [x for n in names for x in _fields(j, n)]
        ck.check(all(x is None for x in vals), f"GET {path} via proxy: every credential field is null",
                 f"{len(vals)} fields")
    if args.via != "proxy":
        ck.check(leaked > 0, "directly the reads show the credentials (the check is meaningful)", f"{leaked}")
        return ck.finish("creds")

    target = other or "usr_e2e_missing"
    r = c.call("POST", f"/admin/users/{target}", json_body={"api_token": f"e2e_evil_{tag}"})
    ck.check(r.status == 403 and (r.json() or {}).get("error") == "route_denied",
             "POST /admin/users/{id} {api_token} via proxy -> 403 route_denied", r.brief())
    r = c.call("POST", f"/admin/users/{target}", body=b'{"api\\u005ftoken": "x"}',
               headers={"Content-Type": "application/json"})
    ck.check(r.status == 403, "the same with the key spelled api\\u005ftoken -> 403", r.brief())
    if ver == "v1" and other:
        r = direct.call("GET", f"/admin/users/{other}")
        tok = ((r.json() or {}).get("user") or {}).get("api_token")
        ck.check(tok == f"e2e_creds_{tag}_{other}", "Medusa's api_token of that user is unchanged", str(tok)[:40])
    return ck.finish("creds")


def sc_smoke(args) -> int:
    """A few proxied calls, and (with --expect-log) a line the proxy must have logged, e.g.
    which flavor `auto` detected."""
    ck = Checks()
    c = make_client(args)
    if not wait_ready(args, ck):
        return ck.finish("smoke")
    for path in ("/admin/products?limit=1", "/admin/products?limit=2&offset=1"):
        r = c.call("GET", path)
        ck.check(r.status == 200, f"GET {path} -> 200", r.brief() if r.status != 200 else "")
    r = c.call("GET", f"/admin/products/prod_e2e_missing_{uuid.uuid4().hex[:6]}")
    ck.check(r.status == 404, "unknown product -> 404", r.brief())
    if args.expect_log:
        rx = re.compile(args.expect_log)
        lines = [ln for ln in ProxyLog(args.proxy_log).new_lines() if rx.search(ln)]
        ck.check(bool(lines), f"the proxy logged /{args.expect_log}/", lines[0][:200] if lines else "no such line")
    return ck.finish("smoke")


def sc_nologin(args) -> int:
    """For the static-key flavors: Medusa's log shows no login at all since --since-mark."""
    ck = Checks()
    mlog = MedusaLog(args.medusa_log, args.ver)
    mlog.pos = args.since
    m = mlog.counts()
    ck.figure("medusa_log", m)
    ck.check(m["logins"] == 0 and m["refreshes"] == 0, "no login and no refresh reached Medusa", f"{m['logins']} logins, {m['refreshes']} refreshes")
    return ck.finish("nologin")


def sc_example(args) -> int:
    """The library's showcase, examples/embedded_client (a TokenManager and hyper-util's Client
    behind CredentialLayer, in the example's own process; no proxy), run against Medusa with the
    admin account: with --ver's flavor and with the default (auto), it must exit 0, print a 2xx
    for GET /admin/products and log in exactly once; with a wrong password it must exit 1 with
    a message that names no password. Neither password may appear in its output."""
    ck = Checks()
    if not args.example_bin or not os.access(args.example_bin, os.X_OK):
        ck.check(False, "the example binary exists", str(args.example_bin))
        return ck.finish("example")
    Client(args.medusa or "")  # refuses anything but http on loopback
    password = os.environ.get(args.password_env, "")
    ck.check(bool(password), f"${args.password_env} holds the admin password")
    wrong = f"e2e-wrong-password-{uuid.uuid4().hex[:12]}"
    mlog = MedusaLog(args.medusa_log, args.ver)

    def run(label: str, flavor: str | None, password_env: str, extra: dict) -> tuple[int, str, str, dict]:
        ours = {"MEDUSA_URL", "MEDUSA_EMAIL", "MEDUSA_PASSWORD_ENV", "MEDUSA_FLAVOR"}
        env = {k: v for k, v in os.environ.items() if k not in ours}
        env.update(extra)
        env.update({
            "MEDUSA_URL": args.medusa, "MEDUSA_EMAIL": args.email, "MEDUSA_PASSWORD_ENV": password_env,
            "RUST_LOG": "medusa_auth_proxy=info",
        })
        if flavor:
            env["MEDUSA_FLAVOR"] = flavor
        mlog.mark()
        say(f"{label}: {args.example_bin} (MEDUSA_FLAVOR={flavor or 'unset'}, MEDUSA_PASSWORD_ENV={password_env})")
        t0 = time.monotonic()
        try:
            p = subprocess.run([args.example_bin], env=env, capture_output=True, text=True, timeout=60)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = -1, str(e.stdout or ""), f"timed out after 60 s: {e.stderr or ''}"
        ck.figure(f"{label}.seconds", round(time.monotonic() - t0, 2))
        for name, text in (("stdout", out), ("stderr", err)):
            for ln in text.splitlines():
                print(f"    {label} {name}| {ln}", flush=True)
        m = mlog.counts()
        ck.figure(f"{label}.exit", rc)
        ck.figure(f"{label}.medusa_log", m)
        for secret, what in ((password, "the admin password"), (wrong, "the wrong password")):
            if secret:
                ck.check(secret not in out + err, f"{label}: {what} is not in the output")
        return rc, out, err, m

    for label, flavor in ((f"flavor-{args.ver}", args.ver), ("flavor-default-auto", None)):
        rc, out, err, m = run(label, flavor, args.password_env, {})
        st = re.search(r"^status: (\d{3})", out, re.M)
        code = int(st.group(1)) if st else 0
        ck.figure(f"{label}.status", code)
        ck.check(rc == 0, f"{label}: exits 0", f"exit {rc}; {err.strip()[-300:]}" if rc else "")
        ck.check(200 <= code < 300, f"{label}: printed a 2xx for GET /admin/products", st.group(0) if st else "no status line")
        ck.check(re.search(r"^body: .*products", out, re.M) is not None, f"{label}: printed the start of the products body")
        ok_logins = m["logins"] - m["logins_failed"]
        ck.check(ok_logins == 1, f"{label}: exactly one login in Medusa's log", f"{ok_logins} successful of {m['logins']}")

    rc, out, err, m = run("wrong-password", args.ver, "E2E_EXAMPLE_WRONG_PASSWORD", {"E2E_EXAMPLE_WRONG_PASSWORD": wrong})
    ck.check(rc == 1, "wrong-password: exits 1", f"exit {rc}")
    ck.check("invalid credentials" in err and args.email in err,
             "wrong-password: says the login was refused, for which account", err.strip()[-300:])
    ck.check(m["logins"] - m["logins_failed"] == 0, "wrong-password: no login succeeded", str(m))
    return ck.finish("example")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["crud", "soak", "rotate", "outage", "rss", "mkkey", "nologin", "smoke", "creds", "example"])
    ap.add_argument("--ver", choices=["v1", "v2"], required=True)
    ap.add_argument("--via", default="proxy", choices=["proxy", "none", "direct", "direct-nocookie"])
    ap.add_argument("--proxy", help="proxy base URL, e.g. http://127.0.0.1:PORT")
    ap.add_argument("--ops", help="proxy ops base URL (/readyz is awaited before a scenario)")
    ap.add_argument("--medusa", help="Medusa base URL (direct modes, baselines, key creation)")
    ap.add_argument("--unauth", help="crud: repeat every call here without credentials, expect 401")
    ap.add_argument("--medusa-log", help="Medusa's stdout log (login/refresh counts)")
    ap.add_argument("--medusa-dir", help="Medusa's install dir (to check stored uploads)")
    ap.add_argument("--medusa-pid", type=int, help="rss: Medusa's PID")
    ap.add_argument("--proxy-log", help="the proxy's stderr log")
    ap.add_argument("--ctl", help="path to ctl.sh (rotate, outage)")
    ap.add_argument("--email", default="admin@example.com")
    ap.add_argument("--password-env", default="MEDUSA_ADMIN_PASSWORD")
    ap.add_argument("--api-key-file", help="direct modes: use this static key instead of logging in")
    ap.add_argument("--margin", type=float, default=2.0, help="direct: renew this many seconds before exp")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.05, help="pause between a worker's requests")
    ap.add_argument("--burst", type=int, default=64)
    ap.add_argument("--min-refreshes", type=int, default=0)
    ap.add_argument("--max-logins", type=int, default=None)
    ap.add_argument("--expect-logins", type=int, default=None)
    ap.add_argument("--down-seconds", type=float, default=5)
    ap.add_argument("--after-seconds", type=float, default=8)
    ap.add_argument("--max-recovery", type=float, default=5)
    ap.add_argument("--max-failed-logins", type=int, default=10)
    ap.add_argument("--allow-503-while-down", action="store_true")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--rss-path", default="/admin/currencies?limit=1", help="rss: a cheap authenticated GET")
    ap.add_argument("--memstat-file", help="rss: where Medusa's SIGUSR2 memory probe writes (ctl.sh sets it up)")
    ap.add_argument("--max-new-sessions", type=int, default=16)
    ap.add_argument("--min-baseline-bytes", type=float, default=200)
    ap.add_argument("--max-ratio", type=float, default=0.6)
    ap.add_argument("--out", help="mkkey: file to write the key to")
    ap.add_argument("--expect-log", help="smoke: a regex the proxy's log must match")
    ap.add_argument("--since", type=int, default=0, help="nologin: byte offset into --medusa-log")
    ap.add_argument("--example-bin", help="example: the built examples/embedded_client")
    args = ap.parse_args()
    if args.scenario == "outage" and args.max_logins is None:
        args.max_logins = 1
    fn = {
        "crud": sc_crud, "soak": sc_soak, "rotate": sc_rotate, "outage": sc_outage,
        "rss": sc_rss, "mkkey": sc_mkkey, "nologin": sc_nologin, "smoke": sc_smoke,
        "creds": sc_creds, "example": sc_example,
    }[args.scenario]
    say(f"scenario {args.scenario} (Medusa {args.ver}, via {args.via})")
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
