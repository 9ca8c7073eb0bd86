#!/usr/bin/env bash
# Builds SPIRE server and agent v1.13.3 from the Go module proxy into tools/bin/.
#
# Why: the SPIRE integration tests (UpstreamAuthority and TPM node attestor plugins) run a
# real spire-server and spire-agent. The versions are pinned by tools/spire/go.mod; the
# binaries are reused when already built at that version.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/tools/bin"
want="1.13.3"
mkdir -p "$bin"

have_version() {
  [ -x "$bin/$1" ] && "$bin/$1" --version 2>&1 | grep -q "^$want"
}

if have_version spire-server && have_version spire-agent; then
  exit 0
fi

command -v go >/dev/null || { echo "build-spire: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
echo "build-spire: building spire-server and spire-agent v$want (a few minutes, once)" >&2
cd "$top/tools/spire"
GOBIN="$bin" GOFLAGS=-mod=mod go install tool
have_version spire-server && have_version spire-agent || {
  echo "build-spire: built binaries do not report version $want" >&2; exit 1; }
