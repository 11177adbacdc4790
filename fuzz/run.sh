#!/usr/bin/env bash
# Run each fuzz target for a bounded time (FUZZ_SECONDS, default 60 each).
# Installs cargo-fuzz from crates.io if missing. Uses the nightly toolchain when present;
# otherwise stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags) and no sanitizer.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  sanitizer=address
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  sanitizer=none
fi
mkdir -p corpus/canonicalize corpus/config corpus/scrub
# Seed corpora: real paths and the example configs.
printf '/admin/products' > corpus/canonicalize/seed-products
printf '/admin/auth/token' > corpus/canonicalize/seed-token
for f in ../config/*.toml; do cp "$f" "corpus/config/seed-$(basename "$f")"; done
printf '\x05{"user":{"id":"usr_1","api_token":"sekret","metadata":{"api_token":[1,{"a":"\\""}]}}}' > corpus/scrub/seed-user
printf '\x83{"invites":[{"token":"abc","user_email":"x"}],"note":"\\"api_token\\": no"}' > corpus/scrub/seed-invites
status=0
for target in canonicalize config scrub; do
  echo "== fuzzing $target for ${secs}s"
  log="$(mktemp)"
  if "${fuzz[@]}" run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
      -max_total_time="$secs" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
  else
    echo "FAIL: $target (crash input under fuzz/artifacts/$target/)"
    grep -vE '^\s*(Compiling|Downloaded)' "$log" | tail -n 60
    status=1
  fi
  rm -f "$log"
done
exit "$status"
