#!/usr/bin/env bash
# Benchmark KeyGrid's OCSP responder against the reference `openssl ocsp` responder, side by
# side on this machine, with the same delegated signer key type (P-256, then P-384) and the
# same load generator and settings:
#   - ab (ApacheBench) without keep-alive, since the reference closes every connection,
#     at 1, 16 and 64 concurrent clients;
#   - wrk with keep-alive against KeyGrid only (wrk cannot drive the reference).
# Prints a Markdown table (the one in docs/benchmarks.md came from this script).
#
# Usage: scripts/bench-ocsp.sh            (builds keygrid with --release first)
#        KEYGRID_BIN=path/to/keygrid scripts/bench-ocsp.sh
# Knobs: N (requests per ab run, default 10000), DURATION (wrk, default 10s),
#        CONCURRENCY (default "1 16 64"), ALGORITHMS (default "p256 p384").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-10000}
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-"1 16 64"}
ALGORITHMS=${ALGORITHMS:-"p256 p384"}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "bench-ocsp: $1 is missing: $2" >&2; exit 1; }
}
need openssl "apt-get install openssl"
need ab "apt-get install apache2-utils"
need wrk "apt-get install wrk"
need softhsm2-util "apt-get install softhsm2"
need curl "apt-get install curl"

if [ -z "${KEYGRID_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -p keygrid-core --bin keygrid)
    KEYGRID_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/keygrid"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url
    for _ in $(seq 1 200); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "bench-ocsp: $1 did not come up" >&2
    exit 1
}

curve() { case "$1" in p256) echo prime256v1 ;; p384) echo secp384r1 ;; esac; }

# ---- KeyGrid core with a SoftHSM2 token -------------------------------------------------
KG="$WORK/keygrid"
mkdir -p "$KG/tokens"
export SOFTHSM2_CONF="$KG/softhsm2.conf"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$KG/tokens" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label kgbench --pin 1234 --so-pin 5678 >/dev/null
export KEYGRID_HSM_PIN=1234
CORE_PORT=$(free_port)
KG_HTTP_PORT=$(free_port)

start_keygrid() { # algorithm
    cat >"$KG/core.toml" <<EOF
trust_domain = "bench.example"
data_dir = "$KG/data"
[server]
listen = "127.0.0.1:$CORE_PORT"
[hsm]
module = "$SOFTHSM_MODULE"
token_label = "kgbench"
[http]
listen = "127.0.0.1:$KG_HTTP_PORT"
ocsp_responder_algorithm = "ecdsa-$1"
EOF
    KEYGRID_LOG=warn "$KEYGRID_BIN" serve --config "$KG/core.toml" >>"$KG/core.log" 2>&1 &
    KG_PID=$!
    PIDS+=("$KG_PID")
    wait_http "http://127.0.0.1:$KG_HTTP_PORT/healthz"
}

stop_keygrid() {
    kill "$KG_PID" 2>/dev/null || true
    wait "$KG_PID" 2>/dev/null || true
}

# ---- the reference responder ---------------------------------------------------------------
REF="$WORK/reference"
mkdir -p "$REF"
REF_PORT=$(free_port)
openssl ecparam -name secp384r1 -genkey -noout -out "$REF/ca.key"
openssl req -x509 -new -key "$REF/ca.key" -subj /CN=reference-ca -days 2 -out "$REF/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$REF/leaf.key"
openssl req -new -key "$REF/leaf.key" -subj /CN=leaf -out "$REF/leaf.csr"
openssl x509 -req -in "$REF/leaf.csr" -CA "$REF/ca.pem" -CAkey "$REF/ca.key" -CAcreateserial \
    -days 1 -out "$REF/leaf.pem" 2>/dev/null
SERIAL=$(openssl x509 -in "$REF/leaf.pem" -noout -serial | cut -d= -f2)
printf 'V\t%s\t\t%s\tunknown\t/CN=leaf\n' "$(date -u -d '+1 day' +%y%m%d%H%M%SZ)" "$SERIAL" >"$REF/index.txt"
openssl ocsp -issuer "$REF/ca.pem" -cert "$REF/leaf.pem" -no_nonce -reqout "$REF/req.der"

start_reference() { # algorithm
    openssl ecparam -name "$(curve "$1")" -genkey -noout -out "$REF/ocsp.key"
    openssl req -new -key "$REF/ocsp.key" -subj /CN=reference-ocsp -out "$REF/ocsp.csr"
    printf 'extendedKeyUsage=OCSPSigning\nkeyUsage=digitalSignature\n' >"$REF/ocsp.ext"
    openssl x509 -req -in "$REF/ocsp.csr" -CA "$REF/ca.pem" -CAkey "$REF/ca.key" -CAcreateserial \
        -days 1 -extfile "$REF/ocsp.ext" -out "$REF/ocsp.pem" 2>/dev/null
    openssl ocsp -index "$REF/index.txt" -port "$REF_PORT" -rsigner "$REF/ocsp.pem" \
        -rkey "$REF/ocsp.key" -CA "$REF/ca.pem" -ignore_err -timeout 2 >>"$REF/ocsp.log" 2>&1 &
    REF_PID=$!
    PIDS+=("$REF_PID")
    sleep 0.5
}

stop_reference() {
    kill "$REF_PID" 2>/dev/null || true
    wait "$REF_PID" 2>/dev/null || true
}

verify_once() { # name issuer cert cafile url
    local out
    out=$(openssl ocsp -issuer "$2" -cert "$3" -CAfile "$4" -url "$5" -no_nonce 2>&1)
    if ! grep -q "Response verify OK" <<<"$out" || ! grep -q ": good" <<<"$out"; then
        echo "bench-ocsp: $1 did not give a verified good answer:" >&2
        echo "$out" >&2
        exit 1
    fi
}

# ab without keep-alive: prints "rps p50 p99 p99.9" (ms; p99.9 at ab's 1 ms resolution).
run_ab() { # url request concurrency
    local dir="$WORK/ab"
    mkdir -p "$dir"
    local out
    out=$(ab -q -n "$N" -c "$3" -p "$2" -T application/ocsp-request -e "$dir/p.csv" -g "$dir/t.tsv" "$1" 2>&1)
    if grep -q "Non-2xx" <<<"$out"; then
        echo "bench-ocsp: non-2xx answers from $1" >&2
        exit 1
    fi
    local rps p50 p99 p999
    rps=$(awk '/Requests per second/ {print $4}' <<<"$out")
    p50=$(awk -F, '$1 == 50 {print $2}' "$dir/p.csv")
    p99=$(awk -F, '$1 == 99 {print $2}' "$dir/p.csv")
    p999=$(tail -n +2 "$dir/t.tsv" | cut -f5 | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.999); if (i<1) i=1; print v[i]}')
    printf '%.0f %s %s %s' "$rps" "$p50" "$p99" "$p999"
}

# wrk with keep-alive: prints "rps p50 p99 p99.9" (ms).
cat >"$WORK/post.lua" <<'EOF'
local f = assert(io.open(os.getenv("OCSP_REQ"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/ocsp-request"
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %.0f %.3f %.3f %.3f %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, errors))
end
EOF
run_wrk() { # url request concurrency
    local threads=2
    [ "$3" -lt 2 ] && threads=1
    local line
    line=$(OCSP_REQ="$2" wrk -t"$threads" -c"$3" -d"$DURATION" -s "$WORK/post.lua" "$1" | grep '^RESULT')
    read -r _ rps p50 p99 p999 errors <<<"$line"
    if [ "$errors" != "0" ]; then
        echo "bench-ocsp: wrk saw $errors errors against $1" >&2
        exit 1
    fi
    printf '%s %s %s %s' "$rps" "$p50" "$p99" "$p999"
}

echo "## OCSP responder benchmark"
echo
echo "Machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'); $(uname -sr); $(openssl version)."
echo "ab requests per run: $N; wrk duration: $DURATION; date: $(date -u +%Y-%m-%dT%H:%MZ)."
echo
echo "| signer | clients | transport | reference req/s | reference p50 / p99 / p99.9 (ms) | KeyGrid req/s | KeyGrid p50 / p99 / p99.9 (ms) | throughput ratio |"
echo "|---|---|---|---|---|---|---|---|"
for alg in $ALGORITHMS; do
    start_keygrid "$alg"
    start_reference "$alg"
    KG_DIR="$WORK/kgclient"
    mkdir -p "$KG_DIR"
    # The revocable certificate: core's own serving certificate, issued by the nodes CA.
    curl -sf -o "$KG_DIR/nodes.der" "http://127.0.0.1:$KG_HTTP_PORT/ca/nodes.crt"
    openssl x509 -inform der -in "$KG_DIR/nodes.der" -out "$KG_DIR/nodes.pem"
    cat "$KG/data/bundle.pem" "$KG_DIR/nodes.pem" >"$KG_DIR/chain.pem"
    openssl s_client -connect "127.0.0.1:$CORE_PORT" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -out "$KG_DIR/leaf.pem"
    openssl ocsp -issuer "$KG_DIR/nodes.pem" -cert "$KG_DIR/leaf.pem" -no_nonce -reqout "$KG_DIR/req.der"
    verify_once KeyGrid "$KG_DIR/nodes.pem" "$KG_DIR/leaf.pem" "$KG_DIR/chain.pem" "http://127.0.0.1:$KG_HTTP_PORT/ocsp"
    verify_once reference "$REF/ca.pem" "$REF/leaf.pem" "$REF/ca.pem" "http://127.0.0.1:$REF_PORT/"
    for c in $CONCURRENCY; do
        read -r r_rps r50 r99 r999 <<<"$(run_ab "http://127.0.0.1:$REF_PORT/" "$REF/req.der" "$c")"
        read -r k_rps k50 k99 k999 <<<"$(run_ab "http://127.0.0.1:$KG_HTTP_PORT/ocsp" "$KG_DIR/req.der" "$c")"
        ratio=$(awk -v a="$k_rps" -v b="$r_rps" 'BEGIN {printf "%.1fx", a / b}')
        echo "| $alg | $c | ab, new connection per request | $r_rps | $r50 / $r99 / $r999 | $k_rps | $k50 / $k99 / $k999 | $ratio |"
        c_last=$c
    done
    for c in $CONCURRENCY; do
        read -r k_rps k50 k99 k999 <<<"$(run_wrk "http://127.0.0.1:$KG_HTTP_PORT/ocsp" "$KG_DIR/req.der" "$c")"
        ratio=$(awk -v a="$k_rps" -v b="$r_rps" -v c="$c_last" 'BEGIN {printf "%.1fx (vs reference at %s)", a / b, c}')
        echo "| $alg | $c | wrk, keep-alive (KeyGrid only) | – | – | $k_rps | $k50 / $k99 / $k999 | $ratio |"
    done
    stop_reference
    stop_keygrid
done
