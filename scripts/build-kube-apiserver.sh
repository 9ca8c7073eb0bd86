#!/usr/bin/env bash
# Builds kube-apiserver v1.36.3 from the Go module proxy into tools/bin/.
#
# Why: integration/tests/kube_apiserver.rs runs a real kube-apiserver on KeyGrid's
# certificates with its service-account tokens signed by KeyGrid's ExternalJWTSigner.
# k8s.io/kubernetes is not meant to be imported, so tools/kube-apiserver/go.mod pins each
# staging module (k8s.io/api, k8s.io/apiserver, ...) to the published v0.36.3 by `replace`.
# About 10 minutes and 150 MB, once; reused when already built at that version.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/tools/bin"
want="v1.36.3"
mkdir -p "$bin"

if [ -x "$bin/kube-apiserver" ] && "$bin/kube-apiserver" --version 2>&1 | grep -q "Kubernetes $want\$"; then
  exit 0
fi

command -v go >/dev/null || { echo "build-kube-apiserver: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
echo "build-kube-apiserver: building kube-apiserver $want (about 10 minutes, once)" >&2
cd "$top/tools/kube-apiserver"
GOBIN="$bin" GOFLAGS=-mod=mod go install \
  -ldflags "-X k8s.io/component-base/version.gitVersion=$want -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36" \
  tool
"$bin/kube-apiserver" --version 2>&1 | grep -q "Kubernetes $want\$" || {
  echo "build-kube-apiserver: the built binary does not report $want" >&2; exit 1; }
