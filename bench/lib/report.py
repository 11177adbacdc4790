#!/usr/bin/env python3
"""Summarise one bench/run.sh result directory as Markdown tables.

Usage: lib/report.py RESULT_DIR     (reads raw.csv, rss.csv, meta.txt and, in
                                     short-token mode, token-events.tsv)

Per scenario and target, over the measured rounds (round 0 is the warm-up and is ignored):
  req/s            median throughput; "spread" is (max - min) / median
  p50, p99         medians of wrk's per-run latency percentiles, in ms
  +p50 us          latency added over direct: median over rounds of
                   (target p50 - direct p50) within the same round
  non-2xx, errors  totals over all rounds (wrk: status >= 400; socket errors)
  x direct         median over rounds of (target req/s / direct req/s) taken within the
                   same round and scenario: paired, so slow spells of the machine hit both
                   sides of the ratio
  x nginx          the same against the nginx reference proxy
  proxy CPU        CPU time (user+sys) of the proxy process(es) per request
  upstream CPU     the same for the fake upstream
  wrk CPU          load generator CPU use; near 100 % means the client limited that run
The summary condenses each proxy to geometric means over scenarios; "Targets" checks the
project's performance targets; the short-token section counts logins and failures while the
proxy renewed its token under load. With several binaries under test (run.sh --bin), each is
a target of its own, and "Binaries compared" gives each one's paired ratios against the first
(req/s, p50, p99, CPU per request: median over rounds and the min-max across rounds).
"""
import csv
import math
import pathlib
import statistics
import sys

REFERENCES = ["direct", "nginx", "haproxy", "caddy"]
# The proxy's auth.refresh_before_expiry default (bench/proxy-cmd.sh does not change it).
REFRESH_BEFORE_EXPIRY_S = 60.0


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def gmean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def fmt(value, spec, none="-"):
    return none if value is None else format(value, spec)


def fmt_ratio(value):
    """Two decimals, or three for ratios below 0.1 so they do not read as 0."""
    return fmt(value, ".2f" if value is None or value >= 0.1 else ".3f")


def table(headers, rows, align):
    """A Markdown table with padded columns (readable as plain text)."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.rjust(widths[i]) if align[i] == "r" else c.ljust(widths[i])
                                 for i, c in enumerate(row)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def schedule(lifetime, refresh_before_expiry=REFRESH_BEFORE_EXPIRY_S):
    """The proxy's renewal point, seconds after receiving a token (src/auth/mod.rs
    `schedule`): used until lifetime - margin, renewed a quarter of that (at most 5 min) earlier."""
    margin = min(refresh_before_expiry, lifetime / 2)
    usable = lifetime - margin
    return usable - min(usable / 4, 300.0)


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    meta = dict(line.split("=", 1) for line in (out / "meta.txt").read_text().splitlines() if "=" in line)
    clk_tck = float(meta.get("clk_tck", "100"))
    proxy_name = meta.get("proxy_name") or "proxy"
    short_token = meta.get("mode") == "short-token"
    # The proxies under test: "proxy", or one target per run.sh --bin (first = baseline).
    proxies = [p for p in meta.get("proxies", "proxy").split(",") if p] or ["proxy"]
    label = lambda t: meta.get(f"label_{t}") or (proxy_name if t == "proxy" else t)

    all_runs = list(csv.DictReader((out / "raw.csv").open()))
    runs = [r for r in all_runs if int(r["round"]) >= 1]
    for r in runs:
        secs = int(r["duration_us"]) / 1e6
        req = int(r["requests"])
        r["rps"] = req / secs if secs > 0 else 0.0
        r["proxy_cpu_us"] = int(r["proxy_cpu_ticks"]) / clk_tck * 1e6 / req if req else None
        r["upstream_cpu_us"] = int(r["upstream_cpu_ticks"]) / clk_tck * 1e6 / req if req else None
        r["wrk_cpu_pct"] = float(r["loadgen_cpu_s"]) / secs * 100 if secs > 0 else None

    scenarios = list(dict.fromkeys((r["scenario"], r["label"]) for r in runs))
    present = {r["target"] for r in runs}
    targets = [t for t in REFERENCES + proxies if t in present]
    rounds = sorted({int(r["round"]) for r in runs})

    title = "short-token run" if short_token else "benchmark"
    print(f"# medusa-auth-proxy {title} {meta.get('date', '')}\n")
    if short_token:
        print(f"Fake upstream issues HS256 JWTs that expire **{meta.get('token_lifetime_s')} s** after "
              "login and answers 401 to an expired one.")
    print(f"{len(rounds)} interleaved round(s) x {meta.get('duration_s')} s per run "
          f"(+ {meta.get('warmup_s')} s warm-up), medians over rounds. "
          f"wrk (1 thread) on CPU {meta.get('loadgen_cpu')}; upstream and proxies on CPU "
          f"{meta.get('server_cpu')}, one worker each. Load average before/after: "
          f"{meta.get('loadavg_before')} / {meta.get('loadavg_after')}.")
    print(f"Machine: {meta.get('cpus')} x {meta.get('cpu_model')}, Linux {meta.get('kernel')}. "
          + "Versions: " + ", ".join(f"{k} {meta[k]}" for k in ("nginx", "haproxy", "caddy", "wrk") if meta.get(k))
          + ".")
    if meta.get("proxy_cmd") and len(proxies) == 1:
        print(f"Proxy under test: {meta.get('proxy_version') or proxy_name} "
              f"(commit {meta.get('proxy_commit') or '?'}), `{meta['proxy_cmd']}`.")
    elif meta.get("proxy_cmd"):
        print("Proxies under test (checkout at commit "
              f"{meta.get('proxy_commit') or '?'}): "
              + "; ".join(f"**{label(p)}** = `{meta.get(f'bin_{p}', '')}` "
                          f"({meta.get(f'version_{p}') or '?'})" for p in proxies) + ".")
    print()

    ratio_log = {t: {"direct": [], "nginx": [], "cpu": []} for t in targets}
    cells = {}   # (scenario, target) -> dict of medians, for the targets check
    headers = ["target", "req/s", "spread", "p50 ms", "+p50 us", "p99 ms", "non-2xx", "errors",
               "x direct", "x nginx", "proxy CPU us/req", "upstream CPU us/req", "wrk CPU"]
    align = ["l"] + ["r"] * (len(headers) - 1)
    for scenario, scenario_label in scenarios:
        by = {t: {int(r["round"]): r for r in runs if r["scenario"] == scenario and r["target"] == t}
              for t in targets}
        rows = []
        nginx_cpu = median([r["proxy_cpu_us"] for r in by.get("nginx", {}).values()])
        for t in targets:
            mine = by[t]
            if not mine:
                continue
            rps = [r["rps"] for r in mine.values()]
            med = median(rps)
            spread = (max(rps) - min(rps)) / med * 100 if med else None
            ratios = {}
            for ref in ("direct", "nginx"):
                paired = [mine[k]["rps"] / by[ref][k]["rps"]
                          for k in mine if ref in by and k in by[ref] and by[ref][k]["rps"] > 0]
                ratios[ref] = median(paired)
                if ratios[ref] and t != ref:
                    ratio_log[t][ref].append(ratios[ref])
            added = median([int(mine[k]["p50_us"]) - int(by["direct"][k]["p50_us"])
                            for k in mine if "direct" in by and k in by["direct"]]) if t != "direct" else None
            cpu = median([r["proxy_cpu_us"] for r in mine.values()])
            if cpu and nginx_cpu and t not in ("direct", "nginx"):
                ratio_log[t]["cpu"].append(cpu / nginx_cpu)
            p99 = median([int(r["p99_us"]) / 1000 for r in mine.values()])
            cells[(scenario, t)] = {"x_nginx": ratios["nginx"], "added_p50": added, "p99": p99,
                                    "x_direct": ratios["direct"], "rps": med, "spread": spread,
                                    "cpu": cpu, "rounds": mine}
            rows.append([
                label(t),
                fmt(med, ".0f"),
                fmt(spread, ".0f") + "%" if spread is not None else "-",
                fmt(median([int(r["p50_us"]) / 1000 for r in mine.values()]), ".3f"),
                fmt(added, "+.0f"),
                fmt(p99, ".3f"),
                sum(int(r["non2xx"]) for r in mine.values()),
                sum(int(r["sock_errors"]) for r in mine.values()),
                fmt_ratio(ratios["direct"]),
                fmt_ratio(ratios["nginx"]),
                "-" if t == "direct" else fmt(cpu, ".1f"),
                fmt(median([r["upstream_cpu_us"] for r in mine.values()]), ".1f"),
                fmt(median([r["wrk_cpu_pct"] for r in mine.values()]), ".0f") + "%",
            ])
        print(f"## {scenario_label}  (/admin/products)\n")
        print(table(headers, rows, align))
        print()

    # One line per proxy: geometric means of its per-scenario ratios.
    summary = []
    for t in targets:
        if t == "direct":
            continue
        summary.append([label(t), fmt_ratio(gmean(ratio_log[t]["direct"])),
                        "1.00" if t == "nginx" else fmt_ratio(gmean(ratio_log[t]["nginx"])),
                        "1.00" if t == "nginx" else fmt(gmean(ratio_log[t]["cpu"]), ".2f")])
    if summary and len(scenarios) > 1:
        print("## Summary: geometric means over all scenarios\n")
        print(table(["proxy", "req/s x direct", "req/s x nginx", "CPU/req x nginx"], summary,
                    ["l", "r", "r", "r"]))
        print()

    rss = {}
    rss_path = out / "rss.csv"
    if rss_path.exists():
        rows = []
        for r in csv.DictReader(rss_path.open()):
            rss[r["target"]] = int(r["vmhwm_kb"]) / 1024
            rows.append([r["label"], r["pids"], f"{int(r['vmhwm_kb']) / 1024:.1f}",
                         f"{int(r['vmrss_kb']) / 1024:.1f}",
                         "reused: includes earlier runs" if r["reused"] == "1" else ""])
        print("## Memory (read at the end of the run)\n")
        print("Peak RSS = VmHWM from /proc/PID/status, summed over the process tree "
              "(nginx: master + worker; the sum counts shared pages twice).\n")
        print(table(["process", "procs", "peak RSS MiB", "RSS now MiB", "note"], rows,
                    ["l", "r", "r", "r", "l"]))
        print()

    logins = meta.get("proxy_logins")
    measured = [p for p in proxies if p in targets]
    if not short_token and len(measured) == 1:
        print(f"Logins seen by the upstream while {label(measured[0])} ran: {logins} "
              "(its token is valid until 2100, so exactly 1 is right).\n")
        targets_check(cells, ratio_log, rss, logins, scenarios, targets, measured[0], label(measured[0]))
    elif not short_token and measured:
        print(f"Logins seen by the upstream while the {len(measured)} proxies ran: {logins} "
              f"(the token is valid until 2100, so exactly {len(measured)}, one each, is right).\n")
        for p in measured:
            targets_check(cells, ratio_log, rss, None, scenarios, targets, p, label(p))
        compare_binaries(cells, ratio_log, rss, scenarios, measured, label)
    if short_token and "proxy" in targets:
        short_token_report(out, meta, runs, all_runs, proxy_name)
    return 0


def compare_binaries(cells, ratio_log, rss, scenarios, proxies, label):
    """Each binary against the first, paired round by round within each scenario."""
    base = proxies[0]

    def paired(sc, t, key, f):
        a, b = cells.get((sc, base)), cells.get((sc, t))
        if not a or not b:
            return []
        return [f(b["rounds"][k][key], a["rounds"][k][key]) for k in b["rounds"]
                if k in a["rounds"] and a["rounds"][k][key] and b["rounds"][k][key] is not None]

    def cell(xs, spec, unit=""):
        if not xs:
            return "-"
        return f"{format(median(xs), spec)}{unit} [{format(min(xs), spec)}, {format(max(xs), spec)}]"

    ratio = lambda x, y: x / y
    diff_us = lambda x, y: int(x) - int(y)
    for t in proxies[1:]:
        print(f"## Binaries compared: {label(t)} vs {label(base)}\n")
        print(f"Paired within each round (same scenario, back to back): median over rounds "
              f"[min, max]. req/s and CPU as {label(t)} / {label(base)}; latency as "
              f"{label(t)} - {label(base)} in us. \"spread\" is each binary's own req/s spread "
              "over rounds (max - min) / median, as in the tables above.\n")
        rows, gm_rps, gm_cpu = [], [], []
        for sc, sc_label in scenarios:
            rps = paired(sc, t, "rps", ratio)
            cpu = paired(sc, t, "proxy_cpu_us", ratio)
            if rps:
                gm_rps.append(median(rps))
            if cpu:
                gm_cpu.append(median(cpu))
            a, b = cells.get((sc, base), {}), cells.get((sc, t), {})
            rows.append([
                sc_label, cell(rps, ".3f"),
                f"{fmt(b.get('spread'), '.0f')}% / {fmt(a.get('spread'), '.0f')}%",
                cell(paired(sc, t, "p50_us", diff_us), "+.0f"),
                cell(paired(sc, t, "p99_us", diff_us), "+.0f"),
                cell(cpu, ".3f"),
                f"{fmt_ratio(b.get('x_nginx'))} / {fmt_ratio(a.get('x_nginx'))}",
            ])
        rows.append(["geometric mean", fmt(gmean(gm_rps), ".3f"), "", "", "",
                     fmt(gmean(gm_cpu), ".3f"),
                     f"{fmt_ratio(gmean(ratio_log[t]['nginx']))} / "
                     f"{fmt_ratio(gmean(ratio_log[base]['nginx']))}"])
        print(table(["scenario", "req/s ratio", "spread (each)", "p50 diff us", "p99 diff us",
                     "CPU/req ratio", "x nginx (each)"], rows, ["l", "r", "r", "r", "r", "r", "r"]))
        print()
        if base in rss and t in rss:
            print(f"Peak RSS over the whole run: {label(t)} {rss[t]:.2f} MiB, {label(base)} "
                  f"{rss[base]:.2f} MiB ({rss[t] - rss[base]:+.2f} MiB).\n")


def targets_check(cells, ratio_log, rss, logins, scenarios, targets, proxy, proxy_name):
    """The project's performance targets, measured in this run for target `proxy`."""
    if "nginx" not in targets:
        return
    rows = []
    ok = lambda cond: "-" if cond is None else ("met" if cond else "MISSED")
    gm = gmean(ratio_log[proxy]["nginx"])
    rows.append(["throughput, geometric mean over scenarios", ">= 1.15 x nginx",
                 f"{fmt_ratio(gm)} x nginx", ok(gm >= 1.15 if gm else None)])
    if "haproxy" in targets:
        worse = []
        for sc, sc_label in scenarios:
            mine = cells.get((sc, proxy), {}).get("x_nginx")
            theirs = cells.get((sc, "haproxy"), {}).get("x_nginx")
            if mine is not None and theirs is not None and mine < theirs:
                worse.append(f"{sc_label} ({mine:.2f} < {theirs:.2f})")
        rows.append(["throughput in every scenario", ">= HAProxy's x nginx",
                     "below in: " + "; ".join(worse) if worse else "at or above in all",
                     ok(not worse)])
    c1 = next((sc for sc, lab in scenarios if lab == "GET c=1"), None)
    if c1 and "direct" in targets:
        added = cells.get((c1, proxy), {}).get("added_p50")
        rows.append(["latency added at 1 connection (p50)", "<= +15 us",
                     fmt(added, "+.0f") + " us", ok(added <= 15 if added is not None else None)])
    if c1:
        mine = cells.get((c1, proxy), {}).get("p99")
        ng = cells.get((c1, "nginx"), {}).get("p99")
        rows.append(["p99 at 1 connection", "<= nginx's",
                     f"{fmt(mine, '.3f')} ms vs {fmt(ng, '.3f')} ms",
                     ok(mine <= ng if mine is not None and ng is not None else None)])
    peak = rss.get(proxy)
    rows.append(["peak RSS over the whole run", "<= 10 MiB", f"{fmt(peak, '.1f')} MiB",
                 ok(peak <= 10 if peak is not None else None)])
    if logins is not None:   # several proxies: counted together, above
        rows.append(["logins during the run", "exactly 1", str(logins),
                     ok(str(logins) == "1" if logins not in (None, "") else None)])
    print(f"## Targets ({proxy_name})\n")
    print("One noisy run decides nothing: a MISSED ratio within the spread of its cells "
          "needs more rounds.\n")
    print(table(["target", "wanted", "measured", ""], rows, ["l", "l", "l", "l"]))
    print()


def short_token_report(out, meta, runs, all_runs, proxy_name):
    lifetime = float(meta["token_lifetime_s"])
    t0, t1 = float(meta.get("proxy_t0") or 0), float(meta.get("proxy_t1") or 0)
    events = []
    path = out / "token-events.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            f = line.split("\t")
            if len(f) >= 5:
                events.append(f)
    logins = [(float(f[1]), float(f[3])) for f in events if f[0] == "login"]   # (time, exp)
    verdicts = [f[2] for f in events if f[0] == "verify"]
    primes = [f[2] for f in events if f[0] == "prime"]
    denied = [l for l in (out / "upstream-401.log").read_text().splitlines()] \
        if (out / "upstream-401.log").exists() else []

    # Each token's scheduled renewal point, from its lifetime as received (exp is whole
    # seconds, so a token received at t has exp - t between lifetime - 1 and lifetime).
    sched = [schedule(exp - t) for t, exp in logins]
    intervals = [(logins[i + 1][0] - logins[i][0], sched[i]) for i in range(len(logins) - 1)]
    early = sum(1 for got, want in intervals if got < 0.8 * want)
    gaps = sum(1 for i in range(len(logins) - 1) if logins[i + 1][0] >= logins[i][1])
    if logins and logins[-1][1] <= t1:   # the last token expired while the proxy still ran
        gaps += 1
    mean_sched = statistics.mean(sched) if sched else schedule(lifetime - 0.5)

    print(f"## Token renewal under load ({proxy_name}, tokens live {lifetime:g} s)\n")
    print(f"With `refresh_before_expiry` at its default ({REFRESH_BEFORE_EXPIRY_S:g} s), a token "
          f"shorter than twice that is used for half its lifetime and renewed a quarter of that "
          f"earlier: a {lifetime:g} s token is renewed about {mean_sched:.2f} s after the login "
          f"({lifetime / mean_sched:.2f} logins per lifetime). \"by lifetime\" = seconds / lifetime "
          "(one login per token lifetime); \"by schedule\" = seconds / that renewal interval.\n")
    rows = []
    for r in all_runs:
        if r["target"] != "proxy" or int(r["round"]) < 0:
            continue
        a, b = float(r["t_start"]), float(r["t_end"])
        n = sum(1 for t, _ in logins if a <= t < b)
        secs = b - a
        rows.append([f"r{r['round']} {r['label']}" + (" (warm-up)" if r["round"] == "0" else ""),
                     f"{secs:.1f}", n, f"{secs / lifetime:.1f}", f"{secs / mean_sched:.1f}",
                     int(r["requests"]), r["non2xx"], r["sock_errors"]])
    span = t1 - t0
    n_all = len(logins)
    rows.append([f"whole proxy lifetime (start-up login included)", f"{span:.1f}", n_all,
                 f"{span / lifetime:.1f}", f"{1 + span / mean_sched:.1f}", "", "", ""])
    print(table(["window", "seconds", "logins seen", "expected by lifetime", "expected by schedule",
                 "requests", "non-2xx", "errors"], rows, ["l", "r", "r", "r", "r", "r", "r", "r"]))
    print()
    if intervals:
        got = [g for g, _ in intervals]
        ratio = [g / w for g, w in intervals]
        print(f"Interval between logins: min {min(got):.2f} s, median {median(got):.2f} s, "
              f"max {max(got):.2f} s; as a fraction of each token's scheduled renewal point: "
              f"{min(ratio):.2f} to {max(ratio):.2f}.")
    total_non2xx = sum(int(r["non2xx"]) for r in runs if r["target"] == "proxy")
    total_err = sum(int(r["sock_errors"]) for r in runs if r["target"] == "proxy")
    print(f"Logins seen by the upstream (nginx log): {meta.get('proxy_logins')}; by the token "
          f"service: {n_all}. Early logins (a token replaced before 80 % of its scheduled "
          f"interval, i.e. more than one login per token): {early}. Gaps (a token expired "
          f"before the next login): {gaps}.")
    print(f"401s sent by the upstream while the proxy ran (expired or invalid tokens reaching "
          f"it; the proxy would replay such a request, so clients may not see them): "
          f"{len(denied)}. Token verifications: {verdicts.count('ok')} ok, "
          f"{verdicts.count('expired')} expired, {verdicts.count('bad')} invalid "
          f"(cache primed for {primes.count('200')} of {len(logins)} new tokens).")
    print(f"Client view: {total_non2xx} non-2xx, {total_err} socket errors over "
          f"{sum(int(r['requests']) for r in runs if r['target'] == 'proxy')} requests.\n")
    verdict = early == 0 and gaps == 0 and not denied and total_non2xx == 0 and total_err == 0
    print(f"**{'PASS' if verdict else 'FAIL'}**: one login per token (no early logins, no gaps), "
          "0 upstream 401s, 0 non-2xx, 0 socket errors.\n")


if __name__ == "__main__":
    sys.exit(main())
