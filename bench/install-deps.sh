#!/usr/bin/env bash
# bench/install-deps.sh - install the Debian/Ubuntu packages bench/run.sh needs. Needs root.
# run.sh itself installs nothing; it names this script when a tool is missing.
#
#   nginx            the fake Medusa upstream and the nginx reference proxy (needs the
#                    auth_request module, which Debian's nginx has, for --token-lifetime)
#   haproxy          the HAProxy reference proxy
#   wrk              the load generator
#   curl python3     readiness and sanity checks, config rendering, the report, and the
#                    token service of --token-lifetime (Python standard library only)
#   procps iproute2  ps, ss (finding the proxy's PID by its listening socket)
#   util-linux       taskset, setsid
#
# Optional: caddy (only for --targets ...,caddy): pass --with-caddy.
# To build the proxy: a Rust toolchain (https://rustup.rs); run.sh runs cargo build --release.
set -euo pipefail
pkgs=(nginx haproxy wrk curl python3 procps iproute2 util-linux)
[ "${1:-}" = --with-caddy ] && pkgs+=(caddy)
if [ "$(id -u)" != 0 ]; then
    echo "run as root (e.g. sudo $0 $*)" >&2
    exit 1
fi
apt-get update
apt-get install -y --no-install-recommends "${pkgs[@]}"
# The Debian nginx package enables and starts a system nginx on port 80; the benchmark does
# not need it (it runs its own instances from the state directory, on ports 18080-18091).
