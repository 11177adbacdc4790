#!/usr/bin/env bash
# Soak test (issue 7): runs the release proxy binary for SOAK_SECONDS (default 600) under steady
# mixed load (GET/POST/DELETE, downloads, uploads; SOAK_CLIENTS concurrent clients) against the
# fake Medusa with 5-second tokens, Node-like 5 s idle keep-alive closes and an outage
# (SOAK_OUTAGE_SECONDS down) every SOAK_RESTART_EVERY seconds. Prints requests, failures by
# kind inside/outside the outages, logins, proxy RSS and open fds every SOAK_REPORT_EVERY
# seconds, then a verdict; exits non-zero on FAIL. All knobs: tests/soak/main.rs.
#
#   tests/soak/run.sh                     # 10 minutes
#   SOAK_SECONDS=180 tests/soak/run.sh    # 3 minutes
set -euo pipefail
cd "$(dirname "$0")/../.."
export SOAK_SECONDS="${SOAK_SECONDS:-600}"
exec cargo test --release --test soak -- --ignored --nocapture --exact soak
