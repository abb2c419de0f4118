#!/usr/bin/env bash
# Find, or install, the browser the browser tests drive: Debian's chromium and chromium-driver, the way
# scripts/mysql9.sh provides MySQL 9. Prints "CHROMIUM CHROMEDRIVER" (two paths) on stdout.
#
#   CLIPWATCH_TEST_CHROMIUM / CLIPWATCH_TEST_CHROMEDRIVER   use these instead of looking
#
# Installs with apt-get when they are missing (as root, or through sudo); exits 1 with the reason when
# that is impossible: the browser tests never run without a browser, and never skip.
set -euo pipefail

log() { echo "chromium: $*" >&2; }
chromium=${CLIPWATCH_TEST_CHROMIUM:-$(command -v chromium || true)}
driver=${CLIPWATCH_TEST_CHROMEDRIVER:-$(command -v chromedriver || true)}
if [ -z "$chromium" ] || [ -z "$driver" ]; then
  command -v apt-get >/dev/null || { log "no chromium/chromedriver and no apt-get to install them"; exit 1; }
  as_root=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "installing chromium needs root (or sudo)"; exit 1; }
    as_root=(sudo -n)
  fi
  log "installing Debian's chromium and chromium-driver (once)"
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get install -y -q chromium chromium-driver >&2 \
    || { "${as_root[@]}" apt-get update -q >&2 && "${as_root[@]}" apt-get install -y -q chromium chromium-driver >&2; }
  chromium=$(command -v chromium) driver=$(command -v chromedriver)
fi
log "$("$chromium" --version 2>/dev/null)"
echo "$chromium $driver"
