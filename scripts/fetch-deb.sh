#!/usr/bin/env bash
# Unpack Debian packages into a private prefix, without installing anything into the system and
# without touching the machine's apt state (own sources list, own lists and archives directories).
#
#   scripts/fetch-deb.sh [--closure] SUITE PREFIX PACKAGE...
#
# --closure also fetches every package they depend on (computed each time: suites move, so no .deb
# file name is ever pinned). Used by scripts/mysql9.sh (MySQL 9 from sid) and scripts/promtool.sh.
set -euo pipefail
closure=0
if [ "${1:-}" = "--closure" ]; then closure=1; shift; fi
suite=$1 prefix=$2; shift 2
cache=${CLIPWATCH_CACHE:-$HOME/.cache/clipwatch}
mirror=${CLIPWATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
apt_dir=$cache/apt-$suite
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb [trusted=yes] $mirror $suite main" >"$apt_dir/sources.list"
opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=/dev/null
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::archives=$apt_dir/archives"
  -o "Dir::Cache::pkgcache=$apt_dir/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$apt_dir/srcpkgcache.bin"
  -o Acquire::Languages=none -o APT::Architecture=amd64 -o APT::Architectures=amd64
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${opts[@]}" -qq update >&2
packages=("$@")
if [ $closure = 1 ]; then
  # The perl packages are only needed by maintainer scripts, which are never run here.
  mapfile -t packages < <(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "$@" | grep -v '^ ' | grep -v '^<' \
    | grep -vE '^(perl|libperl|perl-|debconf|dpkg|install-info)' | sort -u)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${opts[@]}" -qq download "${packages[@]}" >&2)
rm -rf "$prefix.tmp"
mkdir -p "$prefix.tmp"
for deb in "$work"/*.deb; do dpkg -x "$deb" "$prefix.tmp"; done
rm -rf "$prefix"
mv "$prefix.tmp" "$prefix"
