#!/usr/bin/env bash
# BuffDB client compatibility: starts a real buffdbd on a temporary data directory, listening on a
# free port on both [::1] and 127.0.0.1 (as BuffDB's clients use both forms), then runs the Node
# (@grpc/grpc-js) and Python (Debian's python3-grpcio) clients in tests/compat against each address:
# BuffDB's examples, then (semantics.py) transactions, indexes and the Query service's Any mapping;
# then a second daemon serving mutual TLS with openssl-made certificates (tls.py and the CLI).
# Exits non-zero if any client fails or the daemon does not shut down cleanly.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

CGO_ENABLED=0 go build -o "$work/buffdbd" ./cmd/buffdbd
if [ ! -d tests/compat/node/node_modules ]; then
  (cd tests/compat/node && npm ci --no-audit --no-fund --loglevel=error)
fi

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addrs=("127.0.0.1:$port")
if /usr/bin/python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
  addrs+=("[::1]:$port")
else
  echo "compat: IPv6 loopback unavailable here; testing 127.0.0.1 only"
fi
listen=()
for a in "${addrs[@]}"; do listen+=(--listen "$a"); done

# start LOG ARGS...: runs the daemon with ARGS, logging to LOG, and waits until it serves.
start() {
  local log=$1; shift
  "$work/buffdbd" run --http-listen= "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do
    grep -q "buffdbd serving" "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "compat: daemon exited early"; exit 1; }
    sleep 0.05
  done
  cat "$log"; echo "compat: daemon not ready"; exit 1
}

start "$work/daemon.log" --data-dir "$work/data" "${listen[@]}"

fail=0
for a in "${addrs[@]}"; do
  node tests/compat/node/compat.js "$a" || fail=1
  /usr/bin/python3 tests/compat/python/compat.py "$a" || fail=1
  /usr/bin/python3 tests/compat/python/semantics.py "$a" || fail=1
done

# The CLI reaches the same daemon over the data directory's socket and sees the clients' writes.
grep -qx '{ offset: 6 }' <<<"$("$work/buffdbd" --data-dir "$work/data" blob get 1 --mode metadata)" || {
  echo "compat: CLI over the daemon socket did not see blob 1's metadata"; fail=1; }

kill -TERM "$pid"
if ! wait "$pid"; then echo "compat: daemon did not exit 0 on SIGTERM"; cat "$work/daemon.log"; fail=1; fi
pid=""

# Mutual TLS, with certificates made by openssl as an operator would: the Python client and the
# CLI (--addr with --tls-ca and a client certificate) get in; without a certificate they do not.
pki="$work/pki"; mkdir "$pki"
newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${newkey[@]}" -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj /CN=compat-ca -days 1 2>/dev/null
issue() { # name, extensions
  openssl req "${newkey[@]}" -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "/CN=$1" 2>/dev/null
  printf '%b' "$2" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -out "$pki/$1.crt" -days 1 -extfile "$pki/$1.ext" 2>/dev/null
}
issue server 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth'
issue device 'extendedKeyUsage=clientAuth'
tport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start "$work/tls.log" --data-dir "$work/tls-data" --listen "127.0.0.1:$tport" \
  --tls-cert "$pki/server.crt" --tls-key "$pki/server.key" --tls-client-ca "$pki/ca.crt"
/usr/bin/python3 tests/compat/python/tls.py "127.0.0.1:$tport" "$pki/ca.crt" "$pki/device.crt" "$pki/device.key" || fail=1
tlscli=("$work/buffdbd" --addr "127.0.0.1:$tport" --tls-ca "$pki/ca.crt")
[ "$("${tlscli[@]}" --tls-client-cert "$pki/device.crt" --tls-client-key "$pki/device.key" kv get python-tls)" = "over mutual TLS" ] || {
  echo "compat: CLI over mutual TLS did not read the Python client's value"; fail=1; }
if "${tlscli[@]}" kv get python-tls >/dev/null 2>&1; then echo "compat: CLI without a client certificate got in"; fail=1; fi
kill -TERM "$pid"
if ! wait "$pid"; then echo "compat: TLS daemon did not exit 0 on SIGTERM"; cat "$work/tls.log"; fail=1; fi
pid=""
[ "$fail" -eq 0 ] && echo "compat: ok (${addrs[*]}, and mutual TLS)"
exit "$fail"
