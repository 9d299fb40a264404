#!/usr/bin/env bash
# Model registry end to end with the real binary and real outside clients:
#  1. start buffdbd; push a single-file and a multi-file model with the CLI (over the daemon socket);
#  2. the Node (@grpc/grpc-js) and Python (Debian's python3-grpcio) clients list models through
#     model:global:index / model:{name}:index and load the single-file model by concatenating the
#     blobs in blob_ids (tests/compat/*/registry.*);
#  3. CLI pull round trip, byte for byte;
#  4. SIGKILL the daemon in the middle of a push: after a restart the version is not visible, the
#     push resumes without resending what was durable, and the pull matches.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "registry-compat: FAIL: $*"; [ -f "$work/daemon.log" ] && tail -20 "$work/daemon.log"; exit 1; }

CGO_ENABLED=0 go build -o "$work/buffdbd" ./cmd/buffdbd
if [ ! -d tests/compat/node/node_modules ]; then
  (cd tests/compat/node && npm ci --no-audit --no-fund --loglevel=error)
fi
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
bd() { "$work/buffdbd" --data-dir "$work/data" "$@"; }

start_daemon() {
  : >"$work/daemon.log"
  "$work/buffdbd" run --data-dir "$work/data" --listen "$addr" --http-listen= >>"$work/daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do
    grep -q "buffdbd serving" "$work/daemon.log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || fail "daemon exited early"
    sleep 0.05
  done
  fail "daemon not ready"
}
start_daemon

# 1. Push. 12 MiB of random bytes make several chunks, so blob_ids has several ids to concatenate;
# 9 MiB of zeros never hit a cut point, so some chunks have the maximum size, the largest message the
# clients in step 2 receive with their default 4 MiB limit.
mkdir -p "$work/single" "$work/multi/onnx"
{ head -c $((12 << 20)) /dev/urandom; head -c $((9 << 20)) /dev/zero; } >"$work/single/weights.bin"
head -c $((5 << 20)) /dev/urandom >"$work/multi/onnx/model.onnx"
echo '{"hidden_size": 768}' >"$work/multi/config.json"
bd model push "$work/single/weights.bin" --name resnet --version 1.0 --framework onnx --param task=vision \
  --input-shape -1,3,224,224 --output-shape -1,1000 >"$work/push1.out" 2>&1 || { cat "$work/push1.out"; fail "push resnet"; }
bd model push "$work/multi" --name org/bert --version v1 --alias production >/dev/null 2>&1 || fail "push org/bert"
sha=$(sha256sum "$work/single/weights.bin" | cut -d' ' -f1)
size=$(stat -c %s "$work/single/weights.bin")

# 2. BuffDB-style clients.
node tests/compat/node/registry.js "$addr" resnet 1.0 "$sha" "$size" || fail "node registry client"
/usr/bin/python3 tests/compat/python/registry.py "$addr" resnet 1.0 "$sha" "$size" || fail "python registry client"

# 3. CLI round trip and listing.
bd model pull org/bert@production -o "$work/out" >/dev/null 2>&1 || fail "pull org/bert"
diff -r "$work/multi" "$work/out" || fail "pulled org/bert differs"
# Output is captured before grep: with pipefail, grep -q quitting at its first match could kill
# the writer with SIGPIPE and fail the pipeline.
ls_out=$(bd model ls) || fail "model ls"
grep -q "org/bert *v1 .*latest,production" <<<"$ls_out" || { echo "$ls_out"; fail "model ls"; }

# 4. SIGKILL mid-push.
head -c $((384 << 20)) /dev/urandom >"$work/big.bin"
bd model push "$work/big.bin" --name big --version v1 --retries 0 >"$work/bigpush.out" 2>&1 &
pushpid=$!
for _ in $(seq 1 600); do
  grep -qE '\((2|3|4|5|6)[0-9]%\)' "$work/bigpush.out" 2>/dev/null && break
  kill -0 "$pushpid" 2>/dev/null || break
  sleep 0.02
done
kill -0 "$pushpid" 2>/dev/null || { cat "$work/bigpush.out"; fail "push finished before the daemon could be killed"; }
kill -KILL "$pid"; wait "$pid" 2>/dev/null || true; pid=""
wait "$pushpid" && fail "push succeeded although the daemon was killed" || true
echo "registry-compat: daemon killed during push at: $(grep -oE '[0-9.]+ [KMG]iB / ' "$work/bigpush.out" | tail -1)"
start_daemon
set +e; bd model show big:v1 >/dev/null 2>&1; rc=$?; set -e
[ "$rc" -eq 3 ] || fail "after SIGKILL mid-push, model show big:v1 exited $rc, want 3 (not found)"
grep -q '^big ' <<<"$(bd model ls)" && fail "after SIGKILL mid-push the version is listed"
out=$(bd model push "$work/big.bin" --name big --version v1 2>/dev/null) || fail "resumed push"
echo "registry-compat: $out"
grep -qE ', 0 B already stored' <<<"$out" && fail "resumed push re-sent everything: $out"
bd model pull big -o "$work/bigout" >/dev/null 2>&1 || fail "pull big"
cmp "$work/big.bin" "$work/bigout/big.bin" || fail "pulled big differs"
bd gc >/dev/null || fail "gc"
bd model verify >/dev/null || fail "verify"

kill -TERM "$pid"
wait "$pid" || fail "daemon did not exit 0 on SIGTERM"
pid=""
echo "registry-compat: ok"
