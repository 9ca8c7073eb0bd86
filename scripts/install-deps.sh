#!/usr/bin/env bash
# Installs the Debian packages KeyGrid's run and test commands need.
#
# Why a script: CI and every new machine start with nothing installed by hand, so the
# project itself must bring SoftHSM2 (the dev HSM), swtpm (the TPM), openssl/curl (the
# independent clients) and the servers its tests start (PostgreSQL, etcd).
#
# Usage: scripts/install-deps.sh [run|test|bench]
#   run   only what `keygrid dev` needs (SoftHSM2)
#   test  everything the test suite needs (default)
#   bench the test packages and what the benchmarks add (nginx as the OCSP raw ceiling)
set -euo pipefail

mode=${1:-test}
run_pkgs=(softhsm2 opensc openssl)
test_pkgs=(softhsm2 opensc openssl curl swtpm swtpm-tools tpm2-tools libtss2-dev
           postgresql etcd-server etcd-client apache2-utils pkg-config)
bench_pkgs=("${test_pkgs[@]}" nginx-light)

case "$mode" in
  run) want=("${run_pkgs[@]}") ;;
  test) want=("${test_pkgs[@]}") ;;
  bench) want=("${bench_pkgs[@]}") ;;
  *) echo "usage: $0 [run|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
# postgresql's and etcd's packages try to start their services; the tests start their own
# private instances, so service start-up failures in containers are harmless.
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
