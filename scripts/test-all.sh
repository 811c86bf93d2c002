#!/usr/bin/env bash
# Full check of the monorepo: build, typecheck, lint, bun test suites, and the node:test
# conformance suites bundled for and run under real Node. Ends with ONE line:
#   N passed, N failed[, N skipped]
# A failed build/typecheck/lint step counts as one failed item. Exit 0 only if nothing failed.
set -uo pipefail # no -e: every step runs and is counted even after a failure
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/node_modules/.bin:$PATH" # turbo, biome, tsc when run outside `bun run`
# turbo must never phone home (telemetry, update check); CI has no network beyond registries.
export TURBO_TELEMETRY_DISABLED=1 TURBO_NO_UPDATE_NOTIFIER=1 DO_NOT_TRACK=1
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900} # seconds per suite, so a hung socket can't eat CI's 90 min

LOGDIR=$(mktemp -d)
trap 'rm -rf "$LOGDIR"' EXIT
PASSED=0 FAILED=0 SKIPPED=0
SUMMARY=()

note() { SUMMARY+=("$(printf '%-24s %s' "$1" "$2")"); }
banner() { printf '\n==== %s ====\n' "$1"; }

# A whole-step check (build/typecheck/lint): one item, pass or fail.
step() {
  local name=$1
  shift
  banner "$name: $*"
  if timeout "$SUITE_TIMEOUT" "$@"; then
    PASSED=$((PASSED + 1)) && note "$name" "ok"
  else
    FAILED=$((FAILED + 1)) && note "$name" "FAILED"
  fi
}

# last number printed on a line matching "<regex>" in file, else 0
count() { grep -E "$2" "$1" | tail -n 1 | grep -oE '[0-9]+' | head -n 1 || true; }

# Add a test run's counts; a non-zero exit with no failing test counted (crash, load
# error, unhandled rejection, timeout) counts as one failed item.
tally() {
  local name=$1 rc=$2 p=${3:-0} f=${4:-0} s=${5:-0}
  p=${p:-0} f=${f:-0} s=${s:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) SKIPPED=$((SKIPPED + s))
  note "$name" "$p passed, $f failed, $s skipped (exit $rc)"
}

# bun test over an explicit file list (./-prefixed so bun treats them as paths, not filters).
bun_suite() {
  local name=$1
  shift
  local files
  mapfile -t files < <(find "$@" -name '*.test.ts' -not -path '*/node_modules/*' 2>/dev/null | sort)
  banner "$name (bun test, ${#files[@]} files)"
  if [ "${#files[@]}" -eq 0 ]; then
    echo "no test files yet: skipped"
    note "$name" "no test files"
    return
  fi
  local log=$LOGDIR/$name.log rc=0
  timeout --kill-after=30 "$SUITE_TIMEOUT" bun test --timeout 120000 "${files[@]}" 2>&1 | tee "$log" || rc=$?
  # bun's summary: " 12 pass", " 0 fail", " 1 skip", " 2 todo"
  local s t
  s=$(count "$log" '^ *[0-9]+ skip$') t=$(count "$log" '^ *[0-9]+ todo$')
  tally "$name" "$rc" "$(count "$log" '^ *[0-9]+ pass$')" "$(count "$log" '^ *[0-9]+ fail$')" $((${s:-0} + ${t:-0}))
}

# node:test conformance suites: bundle for Node, run with `node --test`.
# `bun build --target=node` resolves workspace packages through the "import" export
# condition (dist/, built above), never "bun" (src/*.ts), so the bundle is plain Node code.
node_suite() {
  local name=node-conformance out=build/node-tests
  local files
  mapfile -t files < <(find ./tests/conformance -maxdepth 1 -name '*.test.ts' 2>/dev/null | sort)
  banner "$name (bundle + node --test, ${#files[@]} files)"
  if [ "${#files[@]}" -eq 0 ]; then
    echo "no test files yet: skipped"
    note "$name" "no test files"
    return
  fi
  # `bun run` can put a bun-as-node shim on PATH when node is missing: insist on real Node.
  if [ -n "$(node -p 'process.versions.bun ?? ""' 2>/dev/null || echo missing)" ]; then
    echo "real Node.js not found on PATH ($(command -v node || echo none))"
    tally "$name-node" 1
    return
  fi
  echo "node $(node --version) at $(command -v node)"
  rm -rf "$out"
  if ! bun build "${files[@]}" --target=node --root=tests/conformance --outdir="$out"; then
    tally "$name-bundle" 1
    return
  fi
  local log=$LOGDIR/$name.log rc=0
  timeout --kill-after=30 "$SUITE_TIMEOUT" node --test --test-reporter=tap --test-force-exit --test-timeout=120000 "$out/" 2>&1 | tee "$log" || rc=$?
  # TAP summary: "# pass 3", "# fail 0", "# cancelled 0", "# skipped 1", "# todo 0"
  local f c s t
  f=$(count "$log" '^# fail [0-9]+$') c=$(count "$log" '^# cancelled [0-9]+$')
  s=$(count "$log" '^# skipped [0-9]+$') t=$(count "$log" '^# todo [0-9]+$')
  tally "$name" "$rc" "$(count "$log" '^# pass [0-9]+$')" $((${f:-0} + ${c:-0})) $((${s:-0} + ${t:-0}))
}

START=$SECONDS
step build turbo run build --continue=dependencies-successful
step typecheck turbo run typecheck --continue=dependencies-successful
step typecheck-tests tsc -p tests/tsconfig.json
step lint turbo run lint --continue=dependencies-successful
bun_suite bun-packages ./packages/*/test
bun_suite bun-tests ./tests
node_suite

banner "summary ($((SECONDS - START))s)"
printf '%s\n' "${SUMMARY[@]}"
LINE="$PASSED passed, $FAILED failed"
[ "$SKIPPED" -gt 0 ] && LINE+=", $SKIPPED skipped"
echo "$LINE"
[ "$FAILED" -eq 0 ]
