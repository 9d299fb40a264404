#!/usr/bin/env bash
# BuffDB client compatibility: starts a real buffdbd on a temporary data directory, listening on a
# free port on both [::1] and 127.0.0.1 (as BuffDB's clients use both forms), then runs the Node
# (@grpc/grpc-js) and Python (Debian's python3-grpcio) clients in tests/compat against each address:
# BuffDB's examples, then (semantics.py) transactions, indexes and the Query service's Any mapping.
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

"$work/buffdbd" run --data-dir "$work/data" "${listen[@]}" --http-listen= >"$work/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  grep -q "buffdbd serving" "$work/daemon.log" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/daemon.log"; echo "compat: daemon exited early"; exit 1; }
  sleep 0.05
done
grep -q "buffdbd serving" "$work/daemon.log" || { cat "$work/daemon.log"; echo "compat: daemon not ready"; exit 1; }

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
[ "$fail" -eq 0 ] && echo "compat: ok (${addrs[*]})"
exit "$fail"
