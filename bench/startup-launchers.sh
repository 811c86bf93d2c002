#!/usr/bin/env bash
# Median wall time of `mcudpt --version` through each launcher path (15 runs each). Run it in a folder
# where the packed tarballs are installed (see CONTRIBUTING.md), after `bun run compile`.
# Paths: npx; the npm bin (the launcher, in-process on Node); bunx (launcher re-runs on Bun);
# bunx --bun; the compiled binary; the bundle under node and bun directly; bare node for scale.
set -u
med() { # command...
  local times=()
  for i in $(seq 1 15); do s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); times+=($(( (e-s)/1000000 ))); done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] " ms (min " a[1] ")"}'
}
echo "npx mcudpt --version:           $(med npx --offline mcudpt --version)"
echo "node_modules/.bin/mcudpt (node): $(med ./node_modules/.bin/mcudpt --version)"
echo "bunx mcudpt --version:          $(med bunx mcudpt --version)"
echo "bunx --bun mcudpt --version:    $(med bunx --bun mcudpt --version)"
echo "compiled binary --version:      $(med "${MCUDPT_BINARY:-$(dirname "$0")/../build/bin/mcudpt}" --version)"
echo "node dist/mcudpt.js --version:  $(med node node_modules/mcudpt/dist/mcudpt.js --version)"
echo "bun dist/mcudpt.js --version:   $(med bun node_modules/mcudpt/dist/mcudpt.js --version)"
echo "node -e 0 (baseline):           $(med node -e 0)"
