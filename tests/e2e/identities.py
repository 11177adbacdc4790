#!/usr/bin/env python3
"""The `identities` scenario: ONE medusa-auth-proxy process in front of the real Medusa v1 and
v2 at once, with three identities (see tests/e2e/README.md, "identities"):

  v1-admin   Medusa v1's admin, served on its own [[listeners]] entry (--v1-proxy)
  v2-admin   Medusa v2's admin, served on another [[listeners]] entry (--v2-proxy)
  v2-reader  a second Medusa v2 user, policy read_only = true, reached on the main listener
             (--proxy) with a client key that [[clients]] maps to it

Medusa's official clients do admin work with no credential of their own: @medusajs/medusa-js
through the v1 listener, @medusajs/js-sdk through the v2 listener and, as the reader (its
client key in Proxy-Authorization, no Medusa credential), through the main listener
(lib/jsclients.js). The driver checks the rest with its own plain HTTP client: which account
and which Medusa each listener reaches, the reader's refused writes, /readyz and /metrics,
the logins in Medusa's own logs and the identity in the proxy's access lines.

Python 3 standard library only; uses driver.py's building blocks. Prints a `RESULT {json}`
line like every driver scenario and exits 0 (pass) or 1 (fail).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import V2_LINE, Checks, Client, MedusaLog, ProxyLog, fmt_counter, is_json_error, product_body, say  # noqa: E402

IDENTITIES = ("v1-admin", "v2-admin", "v2-reader")
# Request headers that would carry a Medusa credential (or a session) from the client.
CREDENTIAL_HEADERS = {"authorization", "x-medusa-access-token", "cookie", "x-publishable-api-key"}


def metric_samples(text: str, name: str) -> list[tuple[dict, float]]:
    """Samples of one metric family in Prometheus/OpenMetrics text: [(labels, value)]."""
    out = []
    rx = re.compile(r"^" + re.escape(name) + r"(?:\{(.*)\})?\s+(\S+)")
    for ln in text.splitlines():
        m = rx.match(ln)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        try:
            out.append((labels, float(m.group(2))))
        except ValueError:
            pass
    return out


def logins_by_identity(ops: Client) -> dict:
    """{identity: {"kind/result": count}} from /metrics' identity_logins_total."""
    r = ops.raw("GET", "/metrics")
    per: dict = {i: collections.Counter() for i in IDENTITIES}
    for labels, v in metric_samples(r.body.decode("utf-8", "replace"), "medusa_auth_proxy_identity_logins_total"):
        per.setdefault(labels.get("identity", "?"), collections.Counter())[
            f"{labels.get('kind')}/{labels.get('result')}"] += int(v)
    return {k: dict(v) for k, v in per.items()}


def run_js(args, ck: Checks, label: str, client: str, base: str, modules: str, title: str,
           extra: list[str] | None = None, env: dict | None = None) -> dict:
    """Run lib/jsclients.js; returns {step name: step record} (and checks it ran)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", "jsclients.js")
    cmd = ["node", script, "--client", client, "--base", base, "--modules", modules, "--title", title, *(extra or [])]
    # No proxy variables: axios (medusa-js) would honour http_proxy.
    e = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    e.update(env or {})
    say(f"{label}: node lib/jsclients.js --client {client} --base {base}{' ' + ' '.join(extra) if extra else ''}")
    try:
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=120)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as ex:
        rc, out, err = -1, str(ex.stdout or ""), f"timed out: {ex.stderr or ''}"
    result = None
    for ln in out.splitlines():
        if ln.startswith("JSRESULT "):
            result = json.loads(ln[len("JSRESULT "):])
        else:
            print(f"    {label} | {ln[:400]}", flush=True)
    for ln in err.splitlines():
        print(f"    {label} stderr| {ln[:400]}", flush=True)
    if not ck.check(rc == 0 and result is not None, f"{label}: {client} ran", f"exit {rc}; {err.strip()[-300:]}"):
        return {}
    ck.figure(f"{label}", f"{result['package']} {result['version']}")
    sent = collections.Counter()
    carried = set()
    for req in result["requests"]:
        sent[req["method"]] += 1
        carried |= {h.lower() for h in req["headers"]} & CREDENTIAL_HEADERS
    say(f"  {label}: requests sent: {fmt_counter(sent)}")
    ck.check(sum(sent.values()) > 0 and not carried,
             f"{label}: no request of {client} carried a credential header",
             f"{sum(sent.values())} requests" + (f"; carried {sorted(carried)}" if carried else ""))
    return {s["name"]: s for s in result["steps"]}


def step_ok(steps: dict, name: str) -> dict | None:
    s = steps.get(name)
    return s["value"] if s and s.get("ok") else None


def step_status(steps: dict, name: str) -> int | None:
    s = steps.get(name)
    return s["error"]["status"] if s and not s.get("ok") else None


def brief_step(steps: dict, name: str) -> str:
    s = steps.get(name)
    return json.dumps(s)[:300] if s else "step not run"


def admin_client_checks(ck: Checks, label: str, steps: dict, email: str, title: str) -> None:
    me = step_ok(steps, "me")
    ck.check(bool(me) and me.get("email") == email, f"{label}: who am I -> {email}", brief_step(steps, "me"))
    ck.check(step_ok(steps, "list") is not None, f"{label}: list products", brief_step(steps, "list"))
    created = step_ok(steps, "create")
    ck.check(bool(created) and created.get("title") == title, f"{label}: create a product", brief_step(steps, "create"))
    got = step_ok(steps, "retrieve")
    ck.check(bool(got) and got.get("title") == title, f"{label}: retrieve it", brief_step(steps, "retrieve"))
    found = step_ok(steps, "list-created")
    ck.check(bool(found) and found.get("count") == 1, f"{label}: list finds it by title", brief_step(steps, "list-created"))
    gone = step_ok(steps, "delete")
    ck.check(bool(gone) and gone.get("deleted") is True, f"{label}: delete it", brief_step(steps, "delete"))
    ck.check(step_status(steps, "retrieve-deleted") == 404, f"{label}: the deleted product -> 404",
             brief_step(steps, "retrieve-deleted"))


def sc_identities(args) -> int:
    ck = Checks()
    ops = Client(args.ops)
    key = os.environ.get(args.reader_key_env, "")
    if not ck.check(len(key) >= 16, f"${args.reader_key_env} holds the reader's client key"):
        return ck.finish("identities")
    keyed = {"Proxy-Authorization": f"Bearer {key}"}
    main, via1, via2 = Client(args.proxy), Client(args.v1_proxy), Client(args.v2_proxy)
    log1 = MedusaLog(args.v1_log, "v1")
    log2 = MedusaLog(args.v2_log, "v2")
    log1.pos, log2.pos = args.v1_since, args.v2_since  # since just before the proxy started
    plog = ProxyLog(args.proxy_log)
    plog.pos = args.proxy_since

    # ---- readiness: every identity named, each with a credential -----------------------------
    r, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline:
        r = ops.raw("GET", "/readyz")
        if r.status == 200:
            break
        time.sleep(0.1)
    j = (r.json() if r else None) or {}
    ids = j.get("identities") or {}
    ck.check(r is not None and r.status == 200 and j.get("status") == "ready", "/readyz -> 200 ready", r.brief() if r else "")
    ck.check(sorted(ids) == sorted(IDENTITIES), "/readyz names the three identities", ",".join(sorted(ids)))
    for name in IDENTITIES:
        st = ids.get(name) or {}
        ck.check(st.get("state") == "ready" and (st.get("token_usable_for_s") or 0) > 0,
                 f"/readyz: {name} ready with a usable token", json.dumps(st))
    ck.figure("readyz", {k: v.get("token_usable_for_s") for k, v in ids.items()})
    r = ops.raw("GET", "/readyz?identity=v2-reader")
    j = r.json() or {}
    ck.check(r.status == 200 and list((j.get("identities") or {})) == ["v2-reader"]
             and j["identities"]["v2-reader"].get("state") == "ready",
             "/readyz?identity=v2-reader -> 200, that identity alone, ready", r.brief())
    r = ops.raw("GET", "/readyz?identity=e2e-nobody")
    ck.check(r.status == 404, "/readyz?identity=<unknown> -> 404", r.brief())

    # ---- start-up logins: one per identity, in the proxy's metrics and in Medusa's logs ------
    logins0 = logins_by_identity(ops)
    say(f"  /metrics logins at start: {logins0}")
    for name in IDENTITIES:
        c = logins0.get(name, {})
        ck.check(c.get("login/success", 0) == 1 and sum(c.values()) == 1,
                 f"/metrics: identity_logins_total{{identity=\"{name}\"}}: exactly one successful login",
                 fmt_counter(c))
    m1, m2 = log1.counts(), log2.counts()
    ck.check(m1["logins"] == 1 and m1["logins_failed"] == 0, "Medusa v1's log: exactly one login (v1-admin)", str(m1))
    ck.check(m2["logins"] == 2 and m2["logins_failed"] == 0, "Medusa v2's log: exactly two logins (v2-admin, v2-reader)", str(m2))
    log1.mark()
    log2.mark()

    # ---- each listener: its identity's account, on its identity's Medusa ----------------------
    # v1 has /admin/store and /admin/auth; v2 has /admin/stores and /admin/users/me. A route
    # of the other version is that Medusa's own 404, not the proxy's and not the other's 200.
    def who(c: Client, path: str, hdrs: dict | None = None) -> str | None:
        r = c.call("GET", path, headers=hdrs)
        return ((r.json() or {}).get("user") or {}).get("email") if r.status == 200 else None

    ck.check(who(via1, "/admin/auth") == args.email, f"v1 listener: GET /admin/auth -> {args.email} (v1-admin)")
    ck.check(who(via2, "/admin/users/me") == args.email, f"v2 listener: GET /admin/users/me -> {args.email} (v2-admin)")
    ck.check(who(main, "/admin/users/me", keyed) == args.reader_email,
             f"main listener + reader key: GET /admin/users/me -> {args.reader_email} (v2-reader)")
    for label, c, hdrs, own, other in (
        ("v1 listener", via1, None, "/admin/store", "/admin/stores"),
        ("v2 listener", via2, None, "/admin/stores", "/admin/store"),
        ("main listener + reader key", main, keyed, "/admin/stores", "/admin/store"),
    ):
        r = c.call("GET", own, headers=hdrs)
        field = "store" if own == "/admin/store" else "stores"
        ck.check(r.status == 200 and field in (r.json() or {}), f"{label}: GET {own} (its Medusa's route) -> 200", r.brief())
        r = c.call("GET", other, headers=hdrs)
        proxy_answer = is_json_error(r) and (r.json() or {}).get("error") in (
            "route_denied", "no_identity", "bad_gateway", "upstream_unreachable", "proxy_auth_required")
        ck.check(r.status == 404 and not proxy_answer,
                 f"{label}: GET {other} (the other version's route) -> its own Medusa's 404", r.brief())

    # The main listener serves only keyed callers once [[clients]] exist.
    r = main.call("GET", "/admin/products?limit=1")
    ck.check(r.status == 407 and is_json_error(r), "main listener without a client key -> 407 JSON", r.brief())
    r = main.call("GET", "/admin/products?limit=1", headers={"Proxy-Authorization": "Bearer e2e-not-a-known-key-" + uuid.uuid4().hex})
    ck.check(r.status == 407 and is_json_error(r), "main listener with an unknown client key -> 407 JSON", r.brief())
    # Straight at either Medusa the same call is 401: the credential is the proxy's.
    for ver, base in (("v1", args.medusa_v1), ("v2", args.medusa_v2)):
        r = Client(base).call("GET", "/admin/products?limit=1")
        ck.check(r.status == 401, f"straight at Medusa {ver} without credentials -> 401", r.brief())

    # ---- Medusa's clients, no credential: medusa-js via v1, js-sdk via v2 ----------------------
    t1 = f"e2e-identities-medusa-js-{uuid.uuid4().hex[:8]}"
    s1 = run_js(args, ck, "medusa-js via v1 listener", "medusa-js", args.v1_proxy, args.v1_modules, t1)
    admin_client_checks(ck, "medusa-js via v1 listener", s1, args.email, t1)
    t2 = f"e2e-identities-js-sdk-{uuid.uuid4().hex[:8]}"
    s2 = run_js(args, ck, "js-sdk via v2 listener", "js-sdk", args.v2_proxy, args.v2_modules, t2)
    admin_client_checks(ck, "js-sdk via v2 listener", s2, args.email, t2)
    # Each product went to its own Medusa only.
    r = via2.call("GET", f"/admin/products?q={t1}")
    ck.check(r.status == 200 and (r.json() or {}).get("count") == 0, "medusa-js's product never reached Medusa v2", r.brief())
    r = via1.call("GET", f"/admin/products?q={t2}")
    ck.check(r.status == 200 and (r.json() or {}).get("count") == 0, "js-sdk's product never reached Medusa v1", r.brief())
    m1, m2 = log1.counts(), log2.counts()
    ck.check(m1["requests"] > 0 and m2["requests"] > 0, "both Medusas served requests", f"v1 {m1['requests']}, v2 {m2['requests']}")

    # ---- the reader: reads pass, writes are the proxy's 403, nothing changes in Medusa --------
    victim_title = f"e2e-identities-victim-{uuid.uuid4().hex[:8]}"
    r = via2.call("POST", "/admin/products", json_body=product_body("v2", victim_title))
    victim = ((r.json() or {}).get("product") or {}).get("id")
    ck.check(r.status == 200 and bool(victim), "v2-admin creates a product for the reader to try to delete", r.brief())
    log2.mark()
    attempt = f"e2e-identities-reader-{uuid.uuid4().hex[:8]}"
    r = main.call("GET", "/admin/products?limit=5", headers=keyed)
    ck.check(r.status == 200 and isinstance((r.json() or {}).get("products"), list), "reader: GET /admin/products -> 200", r.brief())
    if victim:
        r = main.call("GET", f"/admin/products/{victim}", headers=keyed)
        ck.check(r.status == 200, "reader: GET the product -> 200", r.brief())
    writes = [("POST", "/admin/products", product_body("v2", attempt))]
    if victim:
        writes += [("POST", f"/admin/products/{victim}", {"title": victim_title + "-changed"}),
                   ("DELETE", f"/admin/products/{victim}", None)]
    for method, path, body in writes:
        r = main.call(method, path, json_body=body, headers=keyed)
        j = r.json() or {}
        ck.check(r.status == 403 and is_json_error(r) and j.get("error") == "route_denied"
                 and "read_only" in str(j.get("message", "")),
                 f"reader: {method} {path} -> 403 route_denied (read_only), JSON", r.brief())
    s3 = run_js(args, ck, "js-sdk as reader via main listener", "js-sdk", args.proxy, args.v2_modules, attempt + "-sdk",
                ["--reader", "--proxy-key-env", args.reader_key_env] + (["--delete-id", victim] if victim else []))
    me = step_ok(s3, "me")
    ck.check(bool(me) and me.get("email") == args.reader_email, f"js-sdk as reader: who am I -> {args.reader_email}",
             brief_step(s3, "me"))
    ck.check(step_ok(s3, "list") is not None, "js-sdk as reader: list products", brief_step(s3, "list"))
    ck.check(step_status(s3, "create") == 403, "js-sdk as reader: create -> FetchError 403", brief_step(s3, "create"))
    if victim:
        ck.check(step_status(s3, "delete") == 403, "js-sdk as reader: delete -> FetchError 403", brief_step(s3, "delete"))
    # Medusa v2's own log: during the reader's turn only reads reached it.
    reached = collections.Counter()
    for ln in log2.new_lines():
        m = V2_LINE.search(ln)
        if m:
            reached[m.group(1)] += 1
    ck.figure("medusa_v2_requests_during_reader", dict(reached))
    ck.check(reached.get("GET", 0) > 0 and set(reached) <= {"GET", "HEAD", "OPTIONS"},
             "Medusa v2's log: only reads reached it while the reader worked", fmt_counter(reached))
    for t in (attempt, attempt + "-sdk"):
        r = via2.call("GET", f"/admin/products?q={t}")
        ck.check(r.status == 200 and (r.json() or {}).get("count") == 0, f"no product {t} exists in Medusa v2", r.brief())
    if victim:
        r = via2.call("GET", f"/admin/products/{victim}")
        ck.check(r.status == 200 and ((r.json() or {}).get("product") or {}).get("title") == victim_title,
                 "the reader's target is still there, unchanged", r.brief())
        r = via2.call("DELETE", f"/admin/products/{victim}")
        ck.check(r.status == 200, "v2-admin deletes it (cleanup)", r.brief())

    # ---- the end: still one login per identity; the access lines name the identity ------------
    logins1 = logins_by_identity(ops)
    ck.figure("logins_per_identity", {k: sum(v.values()) for k, v in logins1.items()})
    for name in IDENTITIES:
        c = logins1.get(name, {})
        ck.check(c.get("login/success", 0) == 1 and sum(c.values()) == 1,
                 f"/metrics at the end: still exactly one login for {name}", fmt_counter(c))
    m1, m2 = log1.counts(), log2.counts()
    ck.check(m1["logins"] == 0 and m2["logins"] == 0,
             "no login reached either Medusa during the scenario", f"v1 {m1['logins']}, v2 {m2['logins']}")
    metrics = ops.raw("GET", "/metrics").body.decode("utf-8", "replace")
    denied = [(lb, int(v)) for lb, v in metric_samples(metrics, "medusa_auth_proxy_denied_requests_total") if v]
    ck.figure("denied", {",".join(f"{k}={v}" for k, v in sorted(lb.items())): v for lb, v in denied})
    refused = [(lb, v) for lb, v in denied if lb.get("reason") == "route_denied"]
    n_writes = len(writes) + (2 if victim else 1)  # the driver's and js-sdk's refused writes
    ck.check(sum(v for _, v in refused) == n_writes, f"/metrics: {n_writes} route_denied (the reader's writes)",
             str(refused))
    if any("identity" in lb for lb, _ in refused):  # once the denial counter carries the identity
        ck.check(all(lb.get("identity") == "v2-reader" for lb, _ in refused),
                 "/metrics: every route_denied is labelled identity=v2-reader", str(refused))
    access = collections.Counter()
    for ln in plog.new_lines():
        m = re.search(r"\baccess\b.*\bidentity=([\w.-]+)", ln) or re.search(r'"identity"\s*:\s*"([\w.-]+)"', ln)
        if m and ("access" in ln):
            access[m.group(1)] += 1
    ck.figure("access_lines_by_identity", dict(access))
    for name in IDENTITIES:
        ck.check(access.get(name, 0) > 0, f"the proxy's access lines name identity={name}", fmt_counter(access))
    ck.check(key not in "\n".join(plog.new_lines()), "the reader's client key is not in the proxy's log")
    return ck.finish("identities")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", required=True, help="the main listener (v2-reader by client key)")
    ap.add_argument("--v1-proxy", required=True, help="the [[listeners]] entry of v1-admin")
    ap.add_argument("--v2-proxy", required=True, help="the [[listeners]] entry of v2-admin")
    ap.add_argument("--ops", required=True)
    ap.add_argument("--medusa-v1", required=True)
    ap.add_argument("--medusa-v2", required=True)
    ap.add_argument("--v1-log", required=True, help="Medusa v1's log")
    ap.add_argument("--v2-log", required=True, help="Medusa v2's log")
    ap.add_argument("--v1-since", type=int, default=0, help="byte offset of --v1-log before the proxy started")
    ap.add_argument("--v2-since", type=int, default=0, help="byte offset of --v2-log before the proxy started")
    ap.add_argument("--proxy-log", required=True)
    ap.add_argument("--proxy-since", type=int, default=0, help="byte offset of --proxy-log before the proxy started")
    ap.add_argument("--v1-modules", required=True, help="Medusa v1's node_modules (medusa-js)")
    ap.add_argument("--v2-modules", required=True, help="Medusa v2's node_modules (js-sdk)")
    ap.add_argument("--email", default="admin@example.com", help="the admin account of both Medusas")
    ap.add_argument("--reader-email", default="reader@example.com")
    ap.add_argument("--reader-key-env", default="E2E_READER_CLIENT_KEY", help="variable holding the reader's client key")
    args = ap.parse_args()
    say("scenario identities (Medusa v1 and v2, one proxy, three identities)")
    return sc_identities(args)


if __name__ == "__main__":
    sys.exit(main())
