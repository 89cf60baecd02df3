#!/usr/bin/env bash
# Runs the tests that need outside programs (`make test` calls it after the main suite).
#
# Such a test lives in a module named after what it needs — `needs_promtool`, `needs_curl_jq`,
# `needs_chromium_chromedriver`: the programs, separated by `_` — and is #[ignore]d, so a plain
# `cargo test` lists it as ignored with the reason. Here each module runs when all its programs
# are on PATH. With CI set it always runs, so a missing program fails the build instead of
# being skipped. A new module needs no change here.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}

listed=$($cargo test --tests --quiet -- --list --ignored 2>/dev/null | grep ': test$' || true)
groups=$(grep -o 'needs_[a-z0-9_]*::' <<<"$listed" | grep -o 'needs_[a-z0-9_]*' | sort -u || true)
if [ -z "$groups" ]; then
  echo "tool-tests: no needs_* tests found" >&2
  exit 1
fi

status=0
for group in $groups; do
  missing=()
  IFS=_ read -r -a tools <<<"${group#needs_}"
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ] && [ -z "${CI:-}" ]; then
    echo "tool-tests: $group not run, missing: ${missing[*]} (listed as ignored above)"
    continue
  fi
  echo "tool-tests: $group:"
  grep "$group::" <<<"$listed" | sed 's/: test$//; s/^/  /'
  # Every test binary runs; keep only the ones that had tests of this group to run.
  $cargo test --tests --quiet -- --ignored "$group::" 2>&1 |
    grep -v -e '^running 0 tests$' -e '^test result: ok\. 0 passed; 0 failed; 0 ignored' -e '^$' ||
    status=1
done
exit $status
