#!/usr/bin/env bash
# Benchmark KeyGrid's OCSP responder against the reference `openssl ocsp` responder, side by
# side on this machine, with the same delegated signer key type (P-256, then P-384) and the
# same load generator and settings:
#   - ab (ApacheBench) without keep-alive, since the reference closes every connection,
#     at 1, 16 and 64 concurrent clients, against both;
#   - ab with keep-alive (-k), REPEAT runs per client count, against KeyGrid and against the
#     raw ceiling: nginx (one worker) serving KeyGrid's own answer bytes as a static file,
#     which is what any HTTP server on this machine can do with no OCSP work at all (the
#     reference cannot keep connections alive, so it has no keep-alive figures).
# Each responder runs pinned to RESPONDER_CPUS and ab to GENERATOR_CPUS, so the generator
# does not take CPU time from the responder it measures (on two cores: one each; KeyGrid's
# runtime sizes its worker threads from the cores it is given).
# Prints a Markdown table (the one in docs/benchmarks.md came from this script).
#
# Usage: scripts/bench-ocsp.sh            (builds keygrid with --release first)
#        KEYGRID_BIN=path/to/keygrid scripts/bench-ocsp.sh
# Knobs: N (requests per ab run without keep-alive, default 10000), NK (per keep-alive
#        run, default 200000), REPEAT (keep-alive runs per client count, default 3),
#        CONCURRENCY (default "1 16 64"), ALGORITHMS (default "p256 p384"),
#        RESPONDER_CPUS (default 0), GENERATOR_CPUS (default 1; both "" to not pin).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-10000}
NK=${NK:-200000}
REPEAT=${REPEAT:-3}
CONCURRENCY=${CONCURRENCY:-"1 16 64"}
ALGORITHMS=${ALGORITHMS:-"p256 p384"}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
if [ "$(nproc)" -ge 2 ]; then
    RESPONDER_CPUS=${RESPONDER_CPUS-0}
    GENERATOR_CPUS=${GENERATOR_CPUS-1}
else
    RESPONDER_CPUS=${RESPONDER_CPUS-}
    GENERATOR_CPUS=${GENERATOR_CPUS-}
fi

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "bench-ocsp: $1 is missing: $2" >&2; exit 1; }
}
"$ROOT/scripts/install-deps.sh" bench
need openssl "apt-get install openssl"
need ab "apt-get install apache2-utils"
need nginx "apt-get install nginx-light"
need taskset "apt-get install util-linux"
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
    rm -rf "$WORK" "${CEIL:-}"
}
trap cleanup EXIT

# Command prefixes that pin a process to its CPUs (empty: not pinned). taskset execs the
# command, so `$!` after `"${ON_RESPONDER[@]}" cmd &` is the command's own PID.
ON_RESPONDER=()
ON_GENERATOR=()
[ -n "$RESPONDER_CPUS" ] && ON_RESPONDER=(taskset -c "$RESPONDER_CPUS")
[ -n "$GENERATOR_CPUS" ] && ON_GENERATOR=(taskset -c "$GENERATOR_CPUS")

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
    KEYGRID_LOG=warn "${ON_RESPONDER[@]}" "$KEYGRID_BIN" serve --config "$KG/core.toml" >>"$KG/core.log" 2>&1 &
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
    "${ON_RESPONDER[@]}" openssl ocsp -index "$REF/index.txt" -port "$REF_PORT" -rsigner "$REF/ocsp.pem" \
        -rkey "$REF/ocsp.key" -CA "$REF/ca.pem" -ignore_err -timeout 2 >>"$REF/ocsp.log" 2>&1 &
    REF_PID=$!
    PIDS+=("$REF_PID")
    sleep 0.5
}

stop_reference() {
    kill "$REF_PID" 2>/dev/null || true
    wait "$REF_PID" 2>/dev/null || true
}

# ---- the raw ceiling: nginx serving a fixed answer -----------------------------------------
# A directory of its own, world-readable: nginx's workers run as an unprivileged user and
# must not be let into $WORK (the HSM token lives there).
CEIL=$(mktemp -d)
mkdir -p "$CEIL/www"
chmod 755 "$CEIL" "$CEIL/www"
CEIL_PORT=$(free_port)
start_ceiling() { # answer-file request-file
    install -m 644 "$1" "$CEIL/www/ocsp"
    cat >"$CEIL/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $CEIL/nginx.pid;
error_log $CEIL/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    default_type application/ocsp-response;
    client_body_temp_path $CEIL/body;
    proxy_temp_path $CEIL/proxy;
    fastcgi_temp_path $CEIL/fastcgi;
    uwsgi_temp_path $CEIL/uwsgi;
    scgi_temp_path $CEIL/scgi;
    server {
        listen 127.0.0.1:$CEIL_PORT;
        root $CEIL/www;
        # The static handler refuses POST with 405; answer it with the file instead.
        location = /ocsp { error_page 405 =200 \$uri; }
    }
}
NGINX
    "${ON_RESPONDER[@]}" nginx -c "$CEIL/nginx.conf" -e "$CEIL/error.log" >>"$CEIL/nginx.log" 2>&1 &
    CEIL_PID=$!
    PIDS+=("$CEIL_PID")
    for _ in $(seq 1 100); do
        curl -sf -o "$CEIL/check" -X POST --data-binary @"$2" \
            -H "Content-Type: application/ocsp-request" "http://127.0.0.1:$CEIL_PORT/ocsp" && break
        sleep 0.1
    done
    if ! cmp -s "$CEIL/check" "$1"; then
        echo "bench-ocsp: nginx does not serve the answer:" >&2
        cat "$CEIL/error.log" "$CEIL/nginx.log" >&2 2>/dev/null || true
        exit 1
    fi
}

stop_ceiling() {
    kill "$CEIL_PID" 2>/dev/null || true
    wait "$CEIL_PID" 2>/dev/null || true
}

nist_curve() { case "$1" in p256) echo P-256 ;; p384) echo P-384 ;; esac; }

# Checks that a responder answers "good", verifiably, signed by a delegated responder of the
# algorithm being measured (so a stale responder left on the port cannot stand in).
verify_once() { # name issuer cert cafile url algorithm
    local out
    out=$(openssl ocsp -issuer "$2" -cert "$3" -CAfile "$4" -url "$5" -no_nonce -resp_text 2>&1)
    if ! grep -q "Response verify OK" <<<"$out" || ! grep -q ": good" <<<"$out"; then
        echo "bench-ocsp: $1 did not give a verified good answer:" >&2
        echo "$out" >&2
        exit 1
    fi
    if [ "$(grep -m1 -o 'NIST CURVE: P-[0-9]*' <<<"$out")" != "NIST CURVE: $(nist_curve "$6")" ]; then
        echo "bench-ocsp: $1's responder certificate is not $(nist_curve "$6")" >&2
        exit 1
    fi
}

# ab: prints "rps p50 p99 p99.9" (ms; p99.9 at ab's 1 ms resolution).
run_ab() { # url request concurrency requests [-k]
    local dir="$WORK/ab"
    mkdir -p "$dir"
    local out
    out=$("${ON_GENERATOR[@]}" ab -q ${5:-} -n "$4" -c "$3" -p "$2" -T application/ocsp-request \
        -e "$dir/p.csv" -g "$dir/t.tsv" "$1" 2>&1)
    # ECDSA signatures vary in length, so an on-demand signer's answers do too: ab's
    # "Length" failures are expected; connect, receive and exception failures are not.
    if grep -q "Non-2xx" <<<"$out" || ! grep -q "(Connect: 0, Receive: 0, Length: [0-9]*, Exceptions: 0)\|^Failed requests: *0$" <<<"$out"; then
        echo "bench-ocsp: failed or non-2xx answers from $1:" >&2
        echo "$out" >&2
        exit 1
    fi
    if [ "${5:-}" = "-k" ] && ! grep -q "^Keep-Alive requests: *$4$" <<<"$out"; then
        echo "bench-ocsp: $1 did not keep every connection alive:" >&2
        echo "$out" >&2
        exit 1
    fi
    local rps p50 p99 p999
    rps=$(awk '/Requests per second/ {print $4}' <<<"$out")
    p50=$(awk -F, '$1 == 50 {print $2}' "$dir/p.csv")
    p99=$(awk -F, '$1 == 99 {print $2}' "$dir/p.csv")
    p999=$(tail -n +2 "$dir/t.tsv" | cut -f5 | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.999); if (i<1) i=1; print v[i]}')
    printf '%.0f %s %s %s' "$rps" "$p50" "$p99" "$p999"
}

echo "## OCSP responder benchmark"
echo
echo "Machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'); $(uname -sr); $(openssl version); $(nginx -v 2>&1 | sed 's/^nginx version: //')."
echo "ab requests per run: $N without keep-alive, $NK with; responders on CPU ${RESPONDER_CPUS:-any}, ab on CPU ${GENERATOR_CPUS:-any}; load average before: $(cut -d' ' -f1-3 /proc/loadavg); date: $(date -u +%Y-%m-%dT%H:%MZ)."
NEW_ROWS=()
KEEP_ROWS=()
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
    verify_once KeyGrid "$KG_DIR/nodes.pem" "$KG_DIR/leaf.pem" "$KG_DIR/chain.pem" "http://127.0.0.1:$KG_HTTP_PORT/ocsp" "$alg"
    verify_once reference "$REF/ca.pem" "$REF/leaf.pem" "$REF/ca.pem" "http://127.0.0.1:$REF_PORT/" "$alg"
    for c in $CONCURRENCY; do
        res=$(run_ab "http://127.0.0.1:$REF_PORT/" "$REF/req.der" "$c" "$N")
        read -r r_rps r50 r99 r999 <<<"$res"
        res=$(run_ab "http://127.0.0.1:$KG_HTTP_PORT/ocsp" "$KG_DIR/req.der" "$c" "$N")
        read -r k_rps k50 k99 k999 <<<"$res"
        ratio=$(awk -v a="$k_rps" -v b="$r_rps" 'BEGIN {printf "%.1fx", a / b}')
        NEW_ROWS+=("| $alg | $c | $r_rps | $r50 / $r99 / $r999 | $k_rps | $k50 / $k99 / $k999 | $ratio |")
        c_last=$c
        ref_last=$r_rps
    done
    stop_reference
    # The ceiling serves the answer KeyGrid gives, byte for byte.
    curl -sf -o "$KG_DIR/answer.der" -X POST --data-binary @"$KG_DIR/req.der" \
        -H "Content-Type: application/ocsp-request" "http://127.0.0.1:$KG_HTTP_PORT/ocsp"
    start_ceiling "$KG_DIR/answer.der" "$KG_DIR/req.der"
    for c in $CONCURRENCY; do
        for run in $(seq 1 "$REPEAT"); do
            res=$(run_ab "http://127.0.0.1:$CEIL_PORT/ocsp" "$KG_DIR/req.der" "$c" "$NK" -k)
            read -r n_rps n50 n99 n999 <<<"$res"
            res=$(run_ab "http://127.0.0.1:$KG_HTTP_PORT/ocsp" "$KG_DIR/req.der" "$c" "$NK" -k)
            read -r k_rps k50 k99 k999 <<<"$res"
            of_ceiling=$(awk -v a="$k_rps" -v b="$n_rps" 'BEGIN {printf "%.0f%%", 100 * a / b}')
            of_ref=$(awk -v a="$k_rps" -v b="$ref_last" 'BEGIN {printf "%.1fx", a / b}')
            KEEP_ROWS+=("| $alg | $c | $run | $n_rps | $n50 / $n99 / $n999 | $k_rps | $k50 / $k99 / $k999 | $of_ceiling | $of_ref |")
        done
    done
    stop_ceiling
    stop_keygrid
done
echo
echo "New connection per request (ab without -k), KeyGrid against the reference:"
echo
echo "| signer | clients | reference req/s | reference p50 / p99 / p99.9 (ms) | KeyGrid req/s | KeyGrid p50 / p99 / p99.9 (ms) | throughput ratio |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${NEW_ROWS[@]}"
echo
echo "Keep-alive (ab -k), KeyGrid against the raw ceiling (nginx serving KeyGrid's answer as a static file); last column: KeyGrid's keep-alive rate over the reference's rate at $c_last clients:"
echo
echo "| signer | clients | run | ceiling req/s | ceiling p50 / p99 / p99.9 (ms) | KeyGrid req/s | KeyGrid p50 / p99 / p99.9 (ms) | KeyGrid of ceiling | KeyGrid ÷ reference |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${KEEP_ROWS[@]}"
