#!/usr/bin/env bash
# Print the path of a promtool binary: the one on PATH, else the one of Debian's `prometheus` package,
# unpacked once into ~/.cache/clipwatch (nothing installed into the system). Used by the tests that
# check the metrics and the alert rules.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if command -v promtool >/dev/null; then command -v promtool; exit 0; fi
prefix=${CLIPWATCH_CACHE:-$HOME/.cache/clipwatch}/prometheus-prefix
if [ ! -x "$prefix/usr/bin/promtool" ]; then
  echo "promtool: fetching Debian's prometheus package into $prefix (once; cached)" >&2
  "$here/scripts/fetch-deb.sh" bookworm "$prefix" prometheus
fi
echo "$prefix/usr/bin/promtool"
