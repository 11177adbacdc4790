#!/usr/bin/env bash
# deploy/validate.sh: offline validation of everything under deploy/.
#
#   deploy/validate.sh            (from anywhere; works on the repository it lives in)
#
# Prints one PASS/FAIL/SKIP line per check (details indented below it) and exits non-zero if
# any check failed. Checks:
#   render    `kubectl kustomize` renders each overlay in deploy/kubernetes/
#   schema    the rendered objects validate against the Kubernetes OpenAPI schemas, strictly
#             (unknown fields are errors), for each version in K8S_VERSIONS, with the PyPI
#             package kubernetes-validate (installed once into a venv under $TMPDIR; it ships
#             the schemas, so validation itself needs no network); cert-manager's
#             Certificate, whose CRD schema is not available offline, is checked
#             structurally instead (known fields, issuerRef, usages, durations, dnsNames)
#   wiring    the rendered pods fit the proxy's config: --config and every secret path in
#             the TOML (identities, [[clients]] key files and TLS pairs included) resolve to a mounted ConfigMap/Secret key, probes hit the ops port,
#             the ops listener is reachable by the kubelet, the grace period covers the drain,
#             sidecar = init container with restartPolicy Always and a /readyz startupProbe,
#             a non-loopback listener has client keys, Host names for its Service and a
#             NetworkPolicy, hardened securityContext
#   check     `medusa-auth-proxy check --no-secrets --config` accepts the TOML of every
#             rendered ConfigMap and deploy/systemd/config.toml (the secrets themselves only
#             exist in the pod / service)
#   rules     `promtool check rules` accepts the groups of deploy/kubernetes/monitoring's
#             PrometheusRule (promtool from Debian's prometheus package: if it is not on PATH,
#             `apt-get download prometheus` and only promtool is unpacked, so no Prometheus
#             service is installed or started)
#   rules-test `promtool test rules` runs monitoring/rules.test.yaml: each alert fires for the
#             right identity / pod, and only for it
#   systemd   `systemd-analyze verify` accepts the unit (ExecStart pointed at the built
#             binary), `systemd-analyze security --offline` rates it OK, and the unit fits
#             deploy/systemd/config.toml (credential path, stop timeout)
#   docker    deploy/Dockerfile is consistent with the build: the binary and package names,
#             ENTRYPOINT = COPY target, `cargo build --release --locked`, Cargo.lock up to
#             date, the build context (Dockerfile.dockerignore) keeps what the build copies,
#             EXPOSE and CMD match the Kubernetes manifests
#
# Environment:
#   MEDUSA_AUTH_PROXY_BIN  the proxy binary to use for `check` (default: target/release/,
#                          built with `cargo build --release --locked` if missing or older
#                          than the sources; target/debug/medusa-auth-proxy after `cargo test`
#                          works as well and saves a release build)
#   K8S_VERSIONS           Kubernetes versions to validate against (default "1.30.0 1.33.0":
#                          the oldest with native sidecars and preStop sleep on by default,
#                          and the one where native sidecars are GA)
#   KUBERNETES_VALIDATE_VERSION  the kubernetes-validate release to install (default 1.37.0)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEPLOY=$ROOT/deploy
OVERLAYS=(sidecar standalone)
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.33.0"}
KV_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
TMPBASE=${TMPDIR:-/tmp}
WORK=$(mktemp -d "$TMPBASE/medusa-auth-proxy-validate.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
pass() { printf 'PASS  %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }
skip() { printf 'SKIP  %s\n' "$*"; }
indent() { sed 's/^/      /'; }

# ---- tools ------------------------------------------------------------------------------------

# kustomize: kubectl's built-in one (kubectl >= 1.21 embeds kustomize v4+), else a standalone
# `kustomize`. Debian's kubernetes-client package (kubectl 1.20, kustomize v2) is too old for
# these overlays, so it is not installed as a fallback.
KUSTOMIZE=()
kustomize_desc=""
if command -v kubectl >/dev/null 2>&1; then
  kv=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}//p' | head -n1)
  major=${kv%%.*}
  if [[ $major =~ ^[0-9]+$ ]] && ((major >= 4)); then
    KUSTOMIZE=(kubectl kustomize)
    kustomize_desc="kubectl kustomize (kustomize v$kv)"
  fi
fi
if ((${#KUSTOMIZE[@]} == 0)) && command -v kustomize >/dev/null 2>&1; then
  KUSTOMIZE=(kustomize build)
  kustomize_desc="kustomize build ($(kustomize version 2>/dev/null | head -n1))"
fi

# Python with kubernetes-validate (and PyYAML, which it depends on) in a reused venv.
VENV=$TMPBASE/medusa-auth-proxy-validate-venv-$KV_VERSION
PY=""
venv_error=""
setup_venv() {
  if [[ -x $VENV/bin/kubernetes-validate ]] && "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    PY=$VENV/bin/python
    return 0
  fi
  rm -rf "$VENV"
  local log=$WORK/venv.log
  if ! python3 -m venv "$VENV" >"$log" 2>&1; then
    venv_error="python3 -m venv failed: $(tail -n 3 "$log")"
    return 1
  fi
  local pkgs=("kubernetes-validate==$KV_VERSION")
  # tomllib is in the standard library from Python 3.11 on.
  "$VENV/bin/python" -c 'import tomllib' 2>/dev/null || pkgs+=(tomli)
  if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "${pkgs[@]}" >"$log" 2>&1; then
    venv_error="pip install ${pkgs[*]} failed: $(tail -n 5 "$log")"
    rm -rf "$VENV"
    return 1
  fi
  PY=$VENV/bin/python
}
setup_venv || true

# The helper that parses manifests, TOML, the unit and the Dockerfile.
HELPER=$WORK/helper.py
cat >"$HELPER" <<'PYTHON'
import fnmatch
import ipaddress
import json
import os
import re
import sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

SECRET_KEYS = {
    ("auth", "password_file"): "password",
    ("auth", "api_key_file"): "api key",
    ("access", "client_keys_file"): "client keys",
    ("upstream", "ca_file"): "CA bundle",
}
ENV_KEYS = {("auth", "password_env"), ("auth", "api_key_env")}
PROBE_PATHS = {"/healthz", "/readyz", "/metrics"}


def duration_s(text):
    """humantime-style "25s", "1m 30s", "500ms" -> seconds (float)."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60,
             "h": 3600, "hr": 3600, "hrs": 3600}
    total, pos, text = 0.0, 0, text.strip()
    for m in re.finditer(r"\s*(\d+)\s*([a-z]+)", text):
        if m.start() != pos or m.group(2) not in units:
            raise ValueError(f"cannot parse duration {text!r}")
        total += int(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"cannot parse duration {text!r}")
    return total


def get(cfg, section, key, default=None):
    return cfg.get(section, {}).get(key, default)


SECRET_FILE_KEYS = ("password_file", "api_key_file", "client_keys_file", "keys_file", "ca_file",
                    "tls_cert_file", "tls_key_file")


def secret_paths(cfg):
    """(label, key, path) of every file the config reads besides itself: the single form's
    [auth]/[access]/[upstream] files, [proxy]'s TLS pair, and the general form's
    upstreams.*, identities.*, [[clients]] and [[listeners]] files."""
    out = []
    for (sec, k) in list(SECRET_KEYS) + [("proxy", "tls_cert_file"), ("proxy", "tls_key_file")]:
        if get(cfg, sec, k) is not None:
            out.append((f"{sec}.{k}", k, get(cfg, sec, k)))
    for table in ("upstreams", "identities"):
        for name, t in (cfg.get(table) or {}).items():
            for k in SECRET_FILE_KEYS:
                if k in t:
                    out.append((f"{table}.{name}.{k}", k, t[k]))
    for arr in ("clients", "listeners"):
        for i, t in enumerate(cfg.get(arr) or []):
            for k in SECRET_FILE_KEYS:
                if k in t:
                    out.append((f"{arr}[{i}].{k}", k, t[k]))
    return out


def env_refs(cfg):
    out = [(f"{sec}.{k}", get(cfg, sec, k)) for sec, k in ENV_KEYS if get(cfg, sec, k) is not None]
    for name, t in (cfg.get("identities") or {}).items():
        for k in ("password_env", "api_key_env"):
            if k in t:
                out.append((f"identities.{name}.{k}", t[k]))
    return out


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host):
    return ipaddress.ip_address(host).is_loopback


# ---- extract: ConfigMap TOML files out of a rendered manifest -----------------------------------
def cmd_extract(render, outdir, prefix):
    n = 0
    for doc in yaml.safe_load_all(open(render)):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if key.endswith(".toml"):
                path = os.path.join(outdir, f"{prefix}--{doc['metadata']['name']}--{key}")
                with open(path, "w") as f:
                    f.write(text)
                print(path)
                n += 1
    if n == 0:
        print(f"no ConfigMap with a .toml key in {render}", file=sys.stderr)
        return 1
    return 0


def resolve_mount(container, volumes, path):
    """Which ConfigMap/Secret key a file path inside the container comes from."""
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if m.get("subPath"):
            if path != mp:
                continue
            rel = m["subPath"]
        elif path.startswith(mp + "/"):
            rel = path[len(mp) + 1:]
        else:
            continue
        vol = volumes.get(m["name"])
        if vol is None:
            return None, f"volumeMount {m['name']!r} has no volume"
        for kind, ref in (("configMap", "name"), ("secret", "secretName")):
            if kind in vol:
                src = vol[kind]
                items = src.get("items")
                if items:
                    match = [i for i in items if i["path"] == rel]
                    if not match:
                        return None, f"{path}: {kind} {src.get(ref)!r} (volume {m['name']!r}) has no item with path {rel!r}"
                    key = match[0]["key"]
                elif "/" in rel:
                    return None, f"{path}: nested path inside {kind} volume {m['name']!r}"
                else:
                    key = rel
                return (kind, src.get(ref), key, m["name"]), None
        return None, f"{path}: volume {m['name']!r} is neither a ConfigMap nor a Secret"
    return None, f"{path}: not under any volumeMount of container {container['name']!r}"


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def effective_sc(pod, container, key):
    sc = container.get("securityContext") or {}
    if key in sc:
        return sc[key]
    return (pod.get("securityContext") or {}).get(key)


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def cmd_wiring(overlay, render):
    docs = [d for d in yaml.safe_load_all(open(render)) if d]
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    services = [d for d in docs if d["kind"] == "Service"]
    netpols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    certs = [d for d in docs if d["kind"] == "Certificate"]
    cert_secrets = {}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
    problems, notes = [], []
    found = 0
    for w in workloads:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        ns = w["metadata"].get("namespace")
        tmpl = w["spec"]["template"]
        pod = tmpl["spec"]
        pod_labels = tmpl.get("metadata", {}).get("labels", {})
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        containers = [(c, "initContainers") for c in pod.get("initContainers", [])] + \
                     [(c, "containers") for c in pod.get("containers", [])]
        for c, where in containers:
            if "medusa-auth-proxy" not in c.get("image", ""):
                continue
            found += 1
            cname = f"{wname} {where}[{c['name']}]"
            args = (c.get("command") or []) + (c.get("args") or [])
            if "--config" not in args or args.index("--config") + 1 >= len(args):
                problems.append(f"{cname}: no --config argument")
                continue
            cfg_path = args[args.index("--config") + 1]
            res, err = resolve_mount(c, volumes, cfg_path)
            if err:
                problems.append(f"{cname}: --config {err}")
                continue
            kind, name, key, _ = res
            if kind != "configMap" or name not in cms or key not in (cms[name].get("data") or {}):
                problems.append(f"{cname}: --config {cfg_path} is {kind} {name!r} key {key!r}, not a rendered ConfigMap key")
                continue
            cfg = tomllib.loads(cms[name]["data"][key])
            notes.append(f"{cname}: --config {cfg_path} <- ConfigMap {name} key {key}")
            tls_secrets = set()
            for label, k, path in secret_paths(cfg):
                res, err = resolve_mount(c, volumes, path)
                if err:
                    problems.append(f"{cname}: {label} = {err}")
                    continue
                rkind, rname, rkey, _ = res
                if rkind != "secret" and k != "ca_file":
                    problems.append(f"{cname}: {label} {path} comes from a {rkind}, not a Secret")
                if k in ("tls_cert_file", "tls_key_file") and rkind == "secret":
                    tls_secrets.add(rname)
                notes.append(f"{cname}: {label} {path} <- {'Secret' if rkind == 'secret' else 'ConfigMap'} {rname} key {rkey}")
            for sname in sorted(tls_secrets):
                issued = [d for d in certs if d["spec"].get("secretName") == sname]
                if issued:
                    notes.append(f"{cname}: TLS Secret {sname} <- cert-manager Certificate {issued[0]['metadata']['name']}")
                    cert_secrets[sname] = issued[0]
            env_names = {e["name"] for e in c.get("env", [])}
            for label, var in env_refs(cfg):
                if var not in env_names:
                    problems.append(f"{cname}: {label} names ${var}, which the container does not set")
            # listeners, ports, probes
            p_host, p_port = split_addr(get(cfg, "proxy", "listen", "127.0.0.1:7000"))
            o_host, o_port = split_addr(get(cfg, "ops", "listen", "127.0.0.1:7001"))
            ports = {p["containerPort"] for p in c.get("ports", [])}
            for what, port in (("proxy.listen", p_port), ("ops.listen", o_port)):
                if port not in ports:
                    problems.append(f"{cname}: {what} port {port} is not a containerPort {sorted(ports)}")
            probes = {n: c.get(n) for n in ("startupProbe", "livenessProbe", "readinessProbe") if c.get(n)}
            for pname, probe in probes.items():
                hg = probe.get("httpGet")
                if not hg:
                    problems.append(f"{cname}: {pname} is not an httpGet probe")
                    continue
                if port_number(c, hg["port"]) != o_port:
                    problems.append(f"{cname}: {pname} port {hg['port']} is not ops.listen's port {o_port}")
                if hg.get("path") not in PROBE_PATHS:
                    problems.append(f"{cname}: {pname} path {hg.get('path')} is not an ops endpoint")
            if probes and is_loopback(o_host):
                problems.append(f"{cname}: ops.listen {o_host}:{o_port} is loopback: the kubelet's probes cannot reach it")
            if (probes.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
                problems.append(f"{cname}: livenessProbe must be GET /healthz")
            if (probes.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
                problems.append(f"{cname}: readinessProbe must be GET /readyz")
            if where == "initContainers":
                ok = True
                if c.get("restartPolicy") != "Always":
                    ok = False
                    problems.append(f"{cname}: an init container without restartPolicy: Always is not a native sidecar (the pod would wait for it to exit)")
                if (probes.get("startupProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
                    ok = False
                    problems.append(f"{cname}: a sidecar needs startupProbe GET /readyz so the main containers start once a token is held")
                if ok:
                    notes.append(f"{cname}: native sidecar (restartPolicy Always), startupProbe /readyz gates the main containers")
            # security context
            for key, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True),
                              ("allowPrivilegeEscalation", False)):
                if effective_sc(pod, c, key) is not want:
                    problems.append(f"{cname}: securityContext.{key} is not {want}")
            caps = ((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or []
            if "ALL" not in caps:
                problems.append(f"{cname}: capabilities do not drop ALL")
            if (effective_sc(pod, c, "seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{cname}: no seccompProfile RuntimeDefault")
            if not (c.get("resources") or {}).get("requests"):
                problems.append(f"{cname}: no resource requests")
            # shutdown budget
            grace = duration_s(get(cfg, "proxy", "shutdown_grace", "25s"))
            pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            if tgps < pre + grace + 5:
                problems.append(f"{cname}: terminationGracePeriodSeconds {tgps} < preStop {pre}s + shutdown_grace {grace:g}s + 5s margin")
            else:
                notes.append(f"{cname}: terminationGracePeriodSeconds {tgps} >= preStop {pre}s + shutdown_grace {grace:g}s + 5s")
            # exposure beyond loopback
            if is_loopback(p_host):
                notes.append(f"{cname}: proxy.listen {p_host}:{p_port} (loopback: same pod only)")
                continue
            if not get(cfg, "access", "client_keys_file") and not cfg.get("clients"):
                problems.append(f"{cname}: proxy.listen {p_host}:{p_port} is not loopback but neither access.client_keys_file nor [[clients]] is set")
            hosts = {h.lower() for h in get(cfg, "access", "allow_hosts", [])}
            for svc in services:
                if not labels_match(svc["spec"].get("selector"), pod_labels):
                    continue
                sname, sns = svc["metadata"]["name"], svc["metadata"].get("namespace")
                names = [sname] + ([f"{sname}.{sns}", f"{sname}.{sns}.svc", f"{sname}.{sns}.svc.cluster.local"] if sns else [])
                for sec_name, cert in cert_secrets.items():
                    missing = [n for n in names if n not in (cert["spec"].get("dnsNames") or [])]
                    if missing:
                        problems.append(f"{cname}: Certificate {cert['metadata']['name']} (Secret {sec_name}) lacks dnsNames {missing} (Service {sname})")
                    else:
                        notes.append(f"{cname}: Certificate {cert['metadata']['name']} covers Service {sname}'s DNS names")
                for n in names:
                    if n not in hosts and not any(h.startswith("*.") and n.endswith(h[1:]) for h in hosts):
                        problems.append(f"{cname}: access.allow_hosts lacks {n!r} (Service {sname})")
                for sp in svc["spec"].get("ports", []):
                    if port_number(c, sp.get("targetPort", sp["port"])) == p_port:
                        notes.append(f"{cname}: Service {sname} port {sp['port']} -> {p_port}; allow_hosts has its DNS names")
                        break
                else:
                    problems.append(f"{cname}: Service {sname} has no port targeting proxy.listen's port {p_port}")
                if not sns:
                    notes.append(f"{cname}: Service {sname} has no namespace here; only its short name was checked")
            pols = [p for p in netpols if labels_match(p["spec"]["podSelector"].get("matchLabels"), pod_labels)]
            if not pols:
                problems.append(f"{cname}: proxy.listen is not loopback and no NetworkPolicy selects the pod")
            for p in pols:
                rules = [r for r in p["spec"].get("ingress", [])
                         if any(port_number(c, pp.get("port")) == p_port for pp in r.get("ports", []))]
                if not rules or any(not r.get("from") for r in rules):
                    problems.append(f"{cname}: NetworkPolicy {p['metadata']['name']} does not restrict who reaches port {p_port}")
                else:
                    notes.append(f"{cname}: NetworkPolicy {p['metadata']['name']} restricts port {p_port}; egress rules: {len(p['spec'].get('egress', []))}")
            if w["kind"] == "Deployment" and w["spec"].get("replicas", 1) > 1:
                if not any(labels_match(d["spec"]["selector"].get("matchLabels"), pod_labels) for d in pdbs):
                    problems.append(f"{wname}: {w['spec']['replicas']} replicas but no PodDisruptionBudget")
                else:
                    notes.append(f"{wname}: {w['spec']['replicas']} replicas with a PodDisruptionBudget")
    if found == 0:
        problems.append("no container running the medusa-auth-proxy image")
    for n in notes:
        print(n)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


# ---- unit: the systemd unit vs. its config.toml --------------------------------------------------
def unit_entries(path):
    entries = []
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, _, v = line.partition("=")
            entries.append((k.strip(), v.strip()))
    return entries


def cmd_unit(unit_path, config_path):
    unit_name = os.path.basename(unit_path)
    entries = unit_entries(unit_path)
    values = {}
    for k, v in entries:
        values.setdefault(k, []).append(v)
    cfg = tomllib.load(open(config_path, "rb"))
    problems, notes = [], []
    exec_start = (values.get("ExecStart") or [""])[-1].split()
    if "--config" in exec_start and exec_start.index("--config") + 1 < len(exec_start):
        notes.append(f"ExecStart --config {exec_start[exec_start.index('--config') + 1]} (install {os.path.relpath(config_path)} there)")
    else:
        problems.append("ExecStart has no --config FILE")
    creds = {}
    for v in values.get("LoadCredential", []):
        name, _, src = v.partition(":")
        creds[f"/run/credentials/{unit_name}/{name}"] = src
    for (sec, k), what in SECRET_KEYS.items():
        path = get(cfg, sec, k)
        if path is None:
            continue
        if path.startswith("/run/credentials/"):
            if path in creds:
                notes.append(f"{sec}.{k} {path} <- LoadCredential from {creds[path]}")
            else:
                problems.append(f"{sec}.{k} {path} is not where any LoadCredential= of {unit_name} lands ({sorted(creds) or 'none'})")
        else:
            notes.append(f"{sec}.{k} {path} is a plain file (not a credential)")
    grace = duration_s(get(cfg, "proxy", "shutdown_grace", "25s"))
    stop = values.get("TimeoutStopSec", [None])[-1]
    if stop is None:
        problems.append("no TimeoutStopSec (the default 90s works, but say it)")
    elif duration_s(stop) < grace + 5:
        problems.append(f"TimeoutStopSec {stop} < shutdown_grace {grace:g}s + 5s")
    else:
        notes.append(f"TimeoutStopSec {stop} >= shutdown_grace {grace:g}s + 5s")
    # The descriptor budget `run` checks at start-up (README, proxy.max_connections), with the
    # defaults it applies: LimitNOFILE must hold it, or the service refuses to start.
    nofile = values.get("LimitNOFILE", [None])[-1]
    budget = (get(cfg, "proxy", "max_connections", 4096)
              + get(cfg, "proxy", "max_concurrent_requests", 1024) + 128)
    for lst in cfg.get("listeners", []):
        budget += lst.get("max_connections", 0) + lst.get("max_concurrent_requests", 0)
    if nofile is None:
        problems.append("no LimitNOFILE (the default soft 1024 cannot hold the default max_connections)")
    elif int(nofile.split(":")[-1]) < budget:
        problems.append(f"LimitNOFILE {nofile} < the descriptor budget {budget} (max_connections + max_concurrent_requests + 128)")
    else:
        notes.append(f"LimitNOFILE {nofile} >= the descriptor budget {budget}")
    if values.get("KillSignal", ["SIGTERM"])[-1] not in ("SIGTERM", "SIGINT"):
        problems.append("KillSignal is neither SIGTERM nor SIGINT: the proxy would not drain")
    if not any("-HUP" in v for v in values.get("ExecReload", [])):
        problems.append("no ExecReload sending SIGHUP")
    host, _ = split_addr(get(cfg, "proxy", "listen", "127.0.0.1:7000"))
    if not is_loopback(host) and not get(cfg, "access", "client_keys_file"):
        problems.append("proxy.listen is not loopback and there are no client keys")
    for want in ("DynamicUser", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                 "PrivateDevices", "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet",
                 "MemoryDenyWriteExecute", "LockPersonality", "RestrictNamespaces"):
        if want not in values:
            problems.append(f"hardening option {want}= is missing")
    for n in notes:
        print(n)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


# ---- docker: the Dockerfile vs. the crate and the manifests --------------------------------------
def cmd_docker(dockerfile, ignorefile, metadata_json, *renders):
    problems, notes = [], []
    meta = json.load(open(metadata_json))
    root = os.path.dirname(os.path.abspath(os.path.join(os.path.dirname(dockerfile), "..", "Cargo.toml")))
    pkgs = [p for p in meta["packages"] if os.path.dirname(p["manifest_path"]) == root]
    if len(pkgs) != 1:
        print(f"PROBLEM: expected one package at {root}, found {len(pkgs)}")
        return 1
    pkg = pkgs[0]
    bins = [t["name"] for t in pkg["targets"] if "bin" in t["kind"]]
    notes.append(f"Cargo.toml package {pkg['name']!r}, binaries {bins}")

    # Parse instructions (join continuation lines; drop comments).
    lines, cur = [], ""
    for raw in open(dockerfile):
        s = raw.rstrip("\n")
        if not cur and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append((cur + s).strip())
        cur = ""
    stages, stage = [], None
    for ln in lines:
        instr, _, rest = ln.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            parts = rest.split()
            stage = {"image": parts[0], "alias": parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None,
                     "instr": []}
            stages.append(stage)
        elif stage is not None:
            stage["instr"].append((instr, rest.strip()))
    if len(stages) < 2:
        problems.append("not a multi-stage build")
        stages += [{"image": "", "alias": None, "instr": []}] * (2 - len(stages))
    build, final = stages[0], stages[-1]

    if not re.match(r"^rust:1(\.\d+)*-bookworm$", build["image"]):
        problems.append(f"builder image is {build['image']}, expected rust:1-bookworm")
    if final["image"] != "gcr.io/distroless/cc-debian12:nonroot":
        problems.append(f"final image is {final['image']}, expected gcr.io/distroless/cc-debian12:nonroot")
    else:
        notes.append(f"stages: {build['image']} -> {final['image']} (bookworm glibc = debian12)")

    workdir = next((v for i, v in build["instr"] if i == "WORKDIR"), "/")
    runs = [v for i, v in build["instr"] if i == "RUN" and "cargo build" in v]
    if not runs:
        problems.append("the builder never runs cargo build")
    for r in runs:
        for flag in ("--release", "--locked"):
            if flag not in r.split():
                problems.append(f"`{r}` lacks {flag}")
        m = re.search(r"--bin\s+(\S+)", r)
        if m and m.group(1) not in bins:
            problems.append(f"`--bin {m.group(1)}` is not a binary of the package ({bins})")
    if runs:
        notes.append(f"builder: {runs[0]}")

    # What the builder copies from the context must survive the .dockerignore.
    copied = []
    for i, v in build["instr"]:
        if i in ("COPY", "ADD") and "--from" not in v:
            parts = [p for p in v.split() if not p.startswith("--")]
            copied += parts[:-1]
    needed = ["Cargo.toml", "Cargo.lock", "src"] + (["build.rs"] if os.path.exists(os.path.join(root, "build.rs")) else [])
    # Targets the manifest declares must exist for cargo to read it at all, even for `--bin`.
    manifest = open(os.path.join(root, "Cargo.toml")).read()
    needed += [d for t, d in (("bench", "benches"), ("test", "tests"), ("example", "examples"))
               if re.search(rf"^\[\[{t}\]\]", manifest, re.M)]
    for n in needed:
        if n not in copied:
            problems.append(f"the builder does not COPY {n}, which the build needs")
    patterns = [l.strip() for l in open(ignorefile) if l.strip() and not l.lstrip().startswith("#")] if os.path.exists(ignorefile) else []
    if not patterns:
        problems.append(f"{ignorefile} is missing or empty: the whole repository (target/, .git/) would be sent as context")
    ctx_ok = bool(patterns)
    if patterns and patterns[0] not in ("*", "**"):
        problems.append(f"{os.path.basename(ignorefile)} does not start with `*`: files not listed (target/, .git/, local configs) reach the build context")
        ctx_ok = False
    for src in copied:
        excluded = False
        for p in patterns:
            neg = p.startswith("!")
            pat = p[1:] if neg else p
            if fnmatch.fnmatch(src, pat) or fnmatch.fnmatch(src, pat.rstrip("/")) or pat in ("*", "**"):
                excluded = not neg
        if excluded:
            problems.append(f"COPY {src}: excluded from the build context by {os.path.basename(ignorefile)}")
            ctx_ok = False
    if ctx_ok:
        notes.append(f"build context: the builder copies {copied}; {os.path.basename(ignorefile)} admits them and nothing else")

    # The final stage: the binary, where ENTRYPOINT looks for it.
    alias = build["alias"]
    copies = [v for i, v in final["instr"] if i == "COPY"]
    bin_copy = None
    for v in copies:
        parts = v.split()
        if any(p == f"--from={alias}" or p == "--from=0" for p in parts):
            srcs = [p for p in parts if not p.startswith("--")]
            bin_copy = (srcs[0], srcs[-1])
    if not bin_copy:
        problems.append(f"the final stage does not COPY --from={alias}")
    else:
        src, dst = bin_copy
        want_src = os.path.join(workdir, "target", "release", pkg["name"])
        if src != want_src:
            problems.append(f"COPY source {src} is not the release binary {want_src}")
        if os.path.basename(src) not in bins:
            problems.append(f"COPY source {src}: {os.path.basename(src)} is not a binary of the package ({bins})")
        ep = next((v for i, v in final["instr"] if i == "ENTRYPOINT"), None)
        try:
            ep_list = json.loads(ep) if ep else None
        except json.JSONDecodeError:
            ep_list = None
        if not ep_list:
            problems.append("ENTRYPOINT is missing or not in exec (JSON) form")
        elif ep_list[0] != dst:
            problems.append(f"ENTRYPOINT {ep_list[0]} is not the COPY target {dst}")
        else:
            notes.append(f"COPY {src} -> {dst} = ENTRYPOINT {ep_list}")
        if len(copies) != 1:
            problems.append(f"the final stage copies {len(copies)} things; only the binary belongs there")
    user = next((v for i, v in reversed(final["instr"]) if i == "USER"), None)
    if final["image"].endswith(":nonroot") and user is None:
        user = "nonroot (image default)"
    if user is None or user.split(":")[0] in ("root", "0"):
        problems.append(f"final stage runs as {user or 'root'}")
    else:
        notes.append(f"USER {user}")

    # EXPOSE and CMD vs. the manifests.
    exposed = set()
    for i, v in final["instr"]:
        if i == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in v.split()}
    cmd = next((v for i, v in final["instr"] if i == "CMD"), None)
    cmd_list = json.loads(cmd) if cmd else []
    for render in renders:
        for doc in yaml.safe_load_all(open(render)):
            if not doc or doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                continue
            spec = doc["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                if "medusa-auth-proxy" not in c.get("image", ""):
                    continue
                ports = {p["containerPort"] for p in c.get("ports", [])}
                if not ports <= exposed:
                    problems.append(f"{os.path.basename(render)}: containerPorts {sorted(ports)} not all EXPOSEd ({sorted(exposed)})")
                if c.get("command"):
                    problems.append(f"{os.path.basename(render)}: container {c['name']} overrides the ENTRYPOINT")
                if c.get("args") and c["args"] != cmd_list:
                    problems.append(f"{os.path.basename(render)}: args {c['args']} differ from the image's CMD {cmd_list}")
    notes.append(f"EXPOSE {sorted(exposed)}, CMD {cmd_list} match the Kubernetes containers")
    for n in notes:
        print(n)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


# ---- crds: objects of kinds kubernetes-validate has no schema for ---------------------------------
# cert-manager's CRD schemas are not available offline: its objects are split off the rendered
# manifest (the rest goes to kubernetes-validate) and checked structurally here: the fields
# cert-manager v1 defines at these levels, required ones present, types right.
CERT_SPEC = {"secretName": str, "issuerRef": dict, "dnsNames": list, "ipAddresses": list,
             "uris": list, "emailAddresses": list, "commonName": str, "duration": str,
             "renewBefore": str, "renewBeforePercentage": int, "usages": list, "privateKey": dict,
             "isCA": bool, "subject": dict, "secretTemplate": dict, "keystores": dict,
             "revisionHistoryLimit": int, "encodeUsagesInRequest": bool, "literalSubject": str,
             "nameConstraints": dict, "otherNames": list, "additionalOutputFormats": list,
             "signatureAlgorithm": str}
ISSUER_REF = {"name": str, "kind": str, "group": str}
PRIVATE_KEY = {"algorithm": ("RSA", "ECDSA", "Ed25519"), "size": int, "encoding": ("PKCS1", "PKCS8"),
               "rotationPolicy": ("Never", "Always")}
USAGES = {"signing", "digital signature", "content commitment", "key encipherment", "key agreement",
          "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
          "server auth", "client auth", "code signing", "email protection", "s/mime",
          "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
          "microsoft sgc", "netscape sgc"}
CRD_KINDS = {("cert-manager.io/v1", "Certificate")}


def check_certificate(doc):
    problems = []
    name = doc.get("metadata", {}).get("name")
    where = f"Certificate/{name}"
    if not name:
        problems.append("Certificate without metadata.name")
    for k in doc:
        if k not in ("apiVersion", "kind", "metadata", "spec"):
            problems.append(f"{where}: unknown field {k}")
    spec = doc.get("spec") or {}
    for k, v in spec.items():
        if k not in CERT_SPEC:
            problems.append(f"{where}: unknown field spec.{k}")
        elif not isinstance(v, CERT_SPEC[k]) or (CERT_SPEC[k] is int and isinstance(v, bool)):
            problems.append(f"{where}: spec.{k} is not a {CERT_SPEC[k].__name__}")
    for req in ("secretName", "issuerRef"):
        if req not in spec:
            problems.append(f"{where}: spec.{req} is required")
    if not any(spec.get(k) for k in ("dnsNames", "ipAddresses", "uris", "emailAddresses", "commonName", "literalSubject")):
        problems.append(f"{where}: no subject (dnsNames, commonName, ...)")
    ref = spec.get("issuerRef") or {}
    for k, v in ref.items():
        if k not in ISSUER_REF or not isinstance(v, str):
            problems.append(f"{where}: spec.issuerRef.{k} unknown or not a string")
    if not ref.get("name"):
        problems.append(f"{where}: spec.issuerRef.name is required")
    if ref.get("group", "cert-manager.io") == "cert-manager.io" and ref.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
        problems.append(f"{where}: spec.issuerRef.kind {ref.get('kind')} is neither Issuer nor ClusterIssuer")
    for u in spec.get("usages") or []:
        if u not in USAGES:
            problems.append(f"{where}: spec.usages: unknown usage {u!r}")
    for k, v in (spec.get("privateKey") or {}).items():
        want = PRIVATE_KEY.get(k)
        if want is None:
            problems.append(f"{where}: unknown field spec.privateKey.{k}")
        elif isinstance(want, tuple) and v not in want:
            problems.append(f"{where}: spec.privateKey.{k} {v!r} not one of {want}")
    for k in ("duration", "renewBefore"):
        if k in spec and not re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", str(spec[k])):
            problems.append(f"{where}: spec.{k} {spec[k]!r} is not a Go duration")
    for n in spec.get("dnsNames") or []:
        if not re.fullmatch(r"(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n):
            problems.append(f"{where}: spec.dnsNames: {n!r} is not a DNS name")
    return problems


def cmd_crds(render, core_out):
    docs = [d for d in yaml.safe_load_all(open(render)) if d]
    core, problems, checked = [], [], []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key == ("cert-manager.io/v1", "Certificate"):
            problems += check_certificate(d)
            checked.append(f"{d['kind']}/{d['metadata'].get('name')}")
        elif "." in (d.get("apiVersion") or "").split("/")[0] and not (d.get("apiVersion") or "").split("/")[0].endswith(".k8s.io"):
            problems.append(f"{d.get('kind')} {d.get('apiVersion')}: a custom resource this script does not know how to check")
        else:
            core.append(d)
    yaml.safe_dump_all(core, open(core_out, "w"), sort_keys=False)
    for c in checked:
        print(f"{c}: checked structurally (cert-manager.io/v1 fields, issuerRef, usages, durations, dnsNames)")
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"extract": cmd_extract, "wiring": cmd_wiring,
              "unit": cmd_unit, "docker": cmd_docker, "crds": cmd_crds}[cmd](*args))
PYTHON

echo "deploy/validate.sh: validating $DEPLOY"

# ---- (a) render each overlay -----------------------------------------------------------------
declare -A RENDERED=()
for o in "${OVERLAYS[@]}"; do
  out=$WORK/$o.yaml
  if ((${#KUSTOMIZE[@]} == 0)); then
    fail "render $o: no kustomize: install kubectl >= 1.21 (it embeds kustomize v4+; Debian's kubernetes-client 1.20 is too old for these overlays) or a standalone kustomize"
    continue
  fi
  if "${KUSTOMIZE[@]}" "$DEPLOY/kubernetes/$o" >"$out" 2>"$WORK/$o.err"; then
    objs=$(sed -n 's/^kind: //p' "$out" | paste -sd, - | sed 's/,/, /g')
    pass "render $o: $kustomize_desc -> $objs"
    RENDERED[$o]=$out
  else
    fail "render $o: ${KUSTOMIZE[*]} deploy/kubernetes/$o failed"
    indent <"$WORK/$o.err"
  fi
done

# ---- (b) schema validation -------------------------------------------------------------------
for o in "${OVERLAYS[@]}"; do
  [[ -n ${RENDERED[$o]:-} ]] || { fail "schema $o: not rendered"; continue; }
  if [[ -z $PY ]]; then
    fail "schema $o: kubernetes-validate unavailable ($venv_error)"
    continue
  fi
  # Custom resources (cert-manager's Certificate) have no schema offline: checked
  # structurally by the helper, the rest by kubernetes-validate.
  core=$WORK/$o.core.yaml
  if "$PY" "$HELPER" crds "${RENDERED[$o]}" "$core" >"$WORK/$o.crds" 2>&1; then
    if [[ -s $WORK/$o.crds ]]; then
      pass "schema $o custom resources: no schema offline, checked structurally"
      indent <"$WORK/$o.crds"
    fi
  else
    fail "schema $o custom resources"
    indent <"$WORK/$o.crds"
  fi
  ok=1
  : >"$WORK/$o.schema"
  for v in $K8S_VERSIONS; do
    if ! "$VENV/bin/kubernetes-validate" --strict --no-warn -k "$v" "$core" >>"$WORK/$o.schema" 2>&1; then
      ok=0
    fi
  done
  n=$(grep -c ' passed for resource ' "$WORK/$o.schema" || true)
  if ((ok)) && ! grep -q '^ERROR' "$WORK/$o.schema"; then
    pass "schema $o: $n object validations passed (strict) against Kubernetes ${K8S_VERSIONS// /, } with kubernetes-validate $KV_VERSION"
  else
    fail "schema $o: kubernetes-validate --strict failed"
    grep -v ' passed for resource ' "$WORK/$o.schema" | indent
  fi
done

# ---- wiring: pods vs. config -----------------------------------------------------------------
for o in "${OVERLAYS[@]}"; do
  [[ -n ${RENDERED[$o]:-} && -n $PY ]] || { fail "wiring $o: not rendered or no Python venv"; continue; }
  if "$PY" "$HELPER" wiring "$o" "${RENDERED[$o]}" >"$WORK/$o.wiring" 2>&1; then
    pass "wiring $o: config paths, ports, probes, securityContext, grace period and exposure fit together"
    indent <"$WORK/$o.wiring"
  else
    fail "wiring $o"
    indent <"$WORK/$o.wiring"
  fi
done

# ---- (c) medusa-auth-proxy check on every config ---------------------------------------------
BIN=""
bin_error=""
resolve_bin() {
  if [[ -n ${MEDUSA_AUTH_PROXY_BIN:-} ]]; then
    [[ -x $MEDUSA_AUTH_PROXY_BIN ]] || { bin_error="MEDUSA_AUTH_PROXY_BIN=$MEDUSA_AUTH_PROXY_BIN is not executable"; return 1; }
    BIN=$(cd "$(dirname "$MEDUSA_AUTH_PROXY_BIN")" && pwd)/$(basename "$MEDUSA_AUTH_PROXY_BIN")
    echo "INFO  proxy binary for check: MEDUSA_AUTH_PROXY_BIN=$BIN"
    return 0
  fi
  local rel=${CARGO_TARGET_DIR:-$ROOT/target}/release/medusa-auth-proxy
  if [[ -x $rel ]] && [[ -z $(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$rel" -print -quit) ]]; then
    BIN=$rel
    echo "INFO  proxy binary for check: $rel (up to date with the sources)"
    return 0
  fi
  echo "INFO  target/release/medusa-auth-proxy is missing or older than the sources: cargo build --release --locked"
  if cargo build --release --locked --quiet >"$WORK/build.log" 2>&1 && [[ -x $rel ]]; then
    BIN=$rel
    return 0
  fi
  bin_error="cargo build --release --locked failed: $(grep -m3 -E '^error' "$WORK/build.log" | tr '\n' ' ')"
  return 1
}
resolve_bin || true

check_config() { # label file
  local label=$1 src=$2 base
  base=$WORK/check/$(basename "$src")
  mkdir -p "$WORK/check"
  if [[ -z $BIN ]]; then
    fail "check $label: no proxy binary ($bin_error)"
    return
  fi
  # --no-secrets: everything but the secrets' values, which exist only in the pod / service.
  if "$BIN" check --no-secrets --config "$src" >"$base.log" 2>&1; then
    pass "check $label: $(grep -m1 '^config ok' "$base.log" || echo 'config ok')"
    # Warnings, if any (grep finds nothing to print for a clean config).
    { grep -v '^config ok' "$base.log" || true; } | indent
  else
    fail "check $label: medusa-auth-proxy check --no-secrets --config refused it"
    indent <"$base.log"
  fi
}

if [[ -n $PY ]]; then
  for o in "${OVERLAYS[@]}"; do
    [[ -n ${RENDERED[$o]:-} ]] || { fail "check $o: not rendered"; continue; }
    mkdir -p "$WORK/configs"
    if ! "$PY" "$HELPER" extract "${RENDERED[$o]}" "$WORK/configs" "$o" >"$WORK/$o.configs" 2>&1; then
      fail "check $o: no config in the rendered ConfigMaps"
      indent <"$WORK/$o.configs"
      continue
    fi
    while IFS= read -r f; do
      label=$(basename "$f" | sed 's/--/ ConfigMap /; s/--/ key /')
      check_config "$label" "$f"
    done <"$WORK/$o.configs"
  done
  check_config "deploy/systemd/config.toml" "$DEPLOY/systemd/config.toml"
else
  fail "check: no Python venv ($venv_error)"
fi

# ---- (d) systemd -----------------------------------------------------------------------------
UNIT=$DEPLOY/systemd/medusa-auth-proxy.service
if [[ -n $PY ]] && "$PY" "$HELPER" unit "$UNIT" "$DEPLOY/systemd/config.toml" >"$WORK/unit.wiring" 2>&1; then
  pass "systemd wiring: the unit's credential, ExecStart, stop timeout, LimitNOFILE and hardening fit config.toml"
  indent <"$WORK/unit.wiring"
else
  fail "systemd wiring"
  indent <"$WORK/unit.wiring" 2>/dev/null || true
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir -p "$WORK/systemd"
  vunit=$WORK/systemd/medusa-auth-proxy.service
  exe=${BIN:-/bin/true}
  sed "s#^ExecStart=/usr/local/bin/medusa-auth-proxy #ExecStart=$exe #" "$UNIT" >"$vunit"
  # verify exits 0 on unknown keys (it only warns), so any message about our unit fails too.
  if (cd "$WORK/systemd" && systemd-analyze verify --man=no ./medusa-auth-proxy.service) >"$WORK/verify.log" 2>&1 &&
    ! grep -q 'medusa-auth-proxy' "$WORK/verify.log"; then
    pass "systemd verify: systemd-analyze verify accepts the unit (ExecStart -> $exe)"
  else
    fail "systemd verify: systemd-analyze verify complained"
    indent <"$WORK/verify.log"
  fi
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    (cd "$WORK/systemd" && systemd-analyze security --offline=yes ./medusa-auth-proxy.service) >"$WORK/security.log" 2>&1 || true
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' "$WORK/security.log")
    if [[ $score =~ ^([0-9]+)\.([0-9]) ]] && ((BASH_REMATCH[1] * 10 + BASH_REMATCH[2] <= 20)); then
      pass "systemd security: exposure $score (systemd-analyze security --offline; <= 2.0 required)"
    else
      fail "systemd security: exposure ${score:-unknown} (> 2.0 or not rated)"
      grep -E '✗|Overall' "$WORK/security.log" | indent
    fi
  else
    skip "systemd security: this systemd-analyze has no --offline"
  fi
else
  skip "systemd verify: systemd-analyze not installed (the unit was not verified)"
fi

# ---- (e) Dockerfile --------------------------------------------------------------------------
if [[ -n $PY ]]; then
  if cargo metadata --no-deps --format-version 1 >"$WORK/metadata.json" 2>"$WORK/metadata.err"; then
    renders=()
    for o in "${OVERLAYS[@]}"; do [[ -n ${RENDERED[$o]:-} ]] && renders+=("${RENDERED[$o]}"); done
    if "$PY" "$HELPER" docker "$DEPLOY/Dockerfile" "$DEPLOY/Dockerfile.dockerignore" "$WORK/metadata.json" \
      ${renders[@]+"${renders[@]}"} >"$WORK/docker.log" 2>&1; then
      pass "docker: deploy/Dockerfile is consistent with Cargo.toml, the build context and the manifests"
      indent <"$WORK/docker.log"
    else
      fail "docker: deploy/Dockerfile"
      indent <"$WORK/docker.log"
    fi
  else
    fail "docker: cargo metadata failed"
    indent <"$WORK/metadata.err"
  fi
  # `cargo build --locked` in the image fails if Cargo.lock is out of date with Cargo.toml.
  if cargo metadata --locked --offline --format-version 1 >/dev/null 2>"$WORK/locked.err" ||
    cargo metadata --locked --format-version 1 >/dev/null 2>"$WORK/locked.err"; then
    pass "docker --locked: Cargo.lock is up to date with Cargo.toml (the image's cargo build --locked can resolve)"
  else
    fail "docker --locked: Cargo.lock is out of date: the image build would fail"
    indent <"$WORK/locked.err"
  fi
else
  fail "docker: no Python venv ($venv_error)"
fi

# ---- (f) alert rules -------------------------------------------------------------------------
RULES=$DEPLOY/kubernetes/monitoring/prometheusrule.yaml
PROMTOOL=""
promtool_error=""
resolve_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL=$(command -v promtool)
    return 0
  fi
  # The package would also install and start a Prometheus server; promtool alone is a static
  # binary inside it.
  local dir=$TMPBASE/medusa-auth-proxy-validate-promtool
  if [[ ! -x $dir/usr/bin/promtool ]]; then
    mkdir -p "$dir"
    if ! (cd "$dir" && apt-get download prometheus) >"$WORK/promtool.log" 2>&1; then
      (DEBIAN_FRONTEND=noninteractive apt-get update -qq && cd "$dir" && apt-get download prometheus) >>"$WORK/promtool.log" 2>&1 ||
        { promtool_error="apt-get download prometheus failed: $(tail -n 2 "$WORK/promtool.log" | tr '\n' ' ')"; return 1; }
    fi
    dpkg-deb -x "$dir"/prometheus_*.deb "$dir" >>"$WORK/promtool.log" 2>&1 ||
      { promtool_error="dpkg-deb -x failed"; return 1; }
    rm -f "$dir"/prometheus_*.deb
  fi
  PROMTOOL=$dir/usr/bin/promtool
}
resolve_promtool || true
if [[ -z $PROMTOOL ]]; then
  fail "rules: no promtool ($promtool_error)"
elif [[ -z $PY ]]; then
  fail "rules: no Python venv ($venv_error)"
elif "$PY" -c 'import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["kind"] == "PrometheusRule", doc["kind"]
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w"))' "$RULES" "$WORK/rules.yaml" >"$WORK/rules.log" 2>&1 &&
  "$PROMTOOL" check rules "$WORK/rules.yaml" >>"$WORK/rules.log" 2>&1; then
  pass "rules: promtool check rules accepts the PrometheusRule ($(grep -o '[0-9]* rules found' "$WORK/rules.log"))"
else
  fail "rules: promtool check rules refused deploy/kubernetes/monitoring/prometheusrule.yaml"
  indent <"$WORK/rules.log"
fi

# The expressions' behaviour: which series fire, with which labels (per identity; scrape
# failures; no metrics at all). Annotations are dropped from the copy under test: their
# templates are what `check rules` above validates, and the tests assert labels.
if [[ -z $PROMTOOL || -z $PY ]]; then
  fail "rules-test: no promtool or Python venv"
elif mkdir -p "$WORK/rules-test" && cp "$DEPLOY/kubernetes/monitoring/rules.test.yaml" "$WORK/rules-test/" &&
  "$PY" -c 'import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for group in doc["spec"]["groups"]:
    for rule in group["rules"]:
        rule.pop("annotations", None)
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w"))' "$RULES" "$WORK/rules-test/rules.yaml" >"$WORK/rules-test.log" 2>&1 &&
  "$PROMTOOL" test rules "$WORK/rules-test/rules.test.yaml" >>"$WORK/rules-test.log" 2>&1; then
  pass "rules-test: promtool test rules (deploy/kubernetes/monitoring/rules.test.yaml)"
else
  fail "rules-test: promtool test rules failed"
  indent <"$WORK/rules-test.log"
fi

echo "deploy/validate.sh: $passed passed, $failed failed"
((failed == 0))
