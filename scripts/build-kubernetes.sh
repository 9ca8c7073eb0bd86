#!/usr/bin/env bash
# Builds kube-apiserver and kubeadm v1.36.3 from the Go module proxy into tools/bin/.
#
# Why: integration/tests/kube_apiserver.rs runs a real kube-apiserver on KeyGrid's
# certificates with its service-account tokens signed by KeyGrid's ExternalJWTSigner, and
# integration/tests/kubeadm_certs.rs has kubeadm itself validate the external-CA set.
# k8s.io/kubernetes is not meant to be imported, so tools/kubernetes/go.mod pins each
# staging module (k8s.io/api, k8s.io/apiserver, ...) to the published v0.36.3 by `replace`.
# About 10 minutes and 250 MB, once; reused when already built at that version.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/tools/bin"
want="v1.36.3"
mkdir -p "$bin"

have_version() {
  [ -x "$bin/kube-apiserver" ] && "$bin/kube-apiserver" --version 2>&1 | grep -q "Kubernetes $want\$" &&
    [ -x "$bin/kubeadm" ] && "$bin/kubeadm" version -o short 2>&1 | grep -q "^$want\$"
}

if have_version; then
  exit 0
fi

command -v go >/dev/null || { echo "build-kubernetes: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
echo "build-kubernetes: building kube-apiserver and kubeadm $want (about 10 minutes, once)" >&2
cd "$top/tools/kubernetes"
GOBIN="$bin" GOFLAGS=-mod=mod go install \
  -ldflags "-X k8s.io/component-base/version.gitVersion=$want -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36" \
  tool
have_version || { echo "build-kubernetes: the built binaries do not report $want" >&2; exit 1; }
