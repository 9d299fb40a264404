#!/usr/bin/env bash
# End-to-end metrics check with Debian's real Prometheus tools:
#  1. start buffdbd on loopback ports, wait for /readyz;
#  2. `promtool check metrics` on a live /metrics scrape (same lint rules as the Go test);
#  3. start `prometheus` scraping buffdbd every second, poll its HTTP API until the target is up and
#     a buffdbd_ series is queryable;
#  4. stop both. Every wait is bounded; everything lives in a temp dir removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Free loopback ports, picked by the kernel (a tiny race with other processes is acceptable here).
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gport=$(free_port); hport=$(free_port); pport=$(free_port)

# wait_for DESCRIPTION SECONDS COMMAND...: retry COMMAND every 0.2 s until it succeeds or time runs out.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "FAIL: timed out after ${secs}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

CGO_ENABLED=0 go build -o "$tmp/buffdbd" ./cmd/buffdbd
"$tmp/buffdbd" run --config=/dev/null --data-dir "$tmp/data" --listen "127.0.0.1:$gport" \
  --http-listen "127.0.0.1:$hport" --socket none --log-format text >"$tmp/buffdbd.log" 2>&1 &
pids+=($!)
if ! wait_for "buffdbd /readyz" 30 curl -fsS "http://127.0.0.1:$hport/readyz"; then cat "$tmp/buffdbd.log"; exit 1; fi

echo "-- promtool check metrics (live scrape)"
curl -fsS "http://127.0.0.1:$hport/metrics" >"$tmp/scrape.txt"
grep -q '^buffdbd_build_info{' "$tmp/scrape.txt" || { echo "FAIL: no buffdbd_build_info in scrape"; exit 1; }
grep -q '^buffdbd_store_keys ' "$tmp/scrape.txt" || { echo "FAIL: no buffdbd_store_keys in scrape"; exit 1; }
grep -q '^grpc_server_handled_total{' "$tmp/scrape.txt" || { echo "FAIL: no grpc_server_handled_total in scrape"; exit 1; }
if ! promtool check metrics <"$tmp/scrape.txt"; then echo "FAIL: promtool check metrics"; exit 1; fi

echo "-- prometheus scrapes buffdbd"
cat >"$tmp/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: buffdbd
    static_configs:
      - targets: ["127.0.0.1:$hport"]
YAML
promtool check config "$tmp/prometheus.yml" >/dev/null
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prom" \
  --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pids+=($!)

api="http://127.0.0.1:$pport/api/v1"
target_up() {
  curl -fsS "$api/targets" | /usr/bin/python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
sys.exit(0 if any(x["labels"].get("job") == "buffdbd" and x["health"] == "up" for x in t) else 1)'
}
series_exists() {
  curl -fsS "$api/query" --data-urlencode 'query=buffdbd_build_info{job="buffdbd"}' | /usr/bin/python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
sys.exit(0 if r and r[0]["value"][1] == "1" else 1)'
}
if ! wait_for "prometheus target up" 60 target_up; then
  curl -sS "$api/targets" || true; cat "$tmp/prometheus.log"; exit 1
fi
if ! wait_for "buffdbd_build_info in prometheus" 30 series_exists; then cat "$tmp/prometheus.log"; exit 1; fi
grep -q '"value":\[[0-9.]*,"1"\]' <<<"$(curl -fsS "$api/query" --data-urlencode 'query=up{job="buffdbd"}')" || {
  echo "FAIL: up{job=buffdbd} != 1"; exit 1; }

echo "-- graceful stop"
kill -TERM "${pids[0]}"
rc=0; wait "${pids[0]}" || rc=$?
pids=("${pids[@]:1}")
if [ "$rc" -ne 0 ]; then cat "$tmp/buffdbd.log"; echo "FAIL: buffdbd exited $rc on SIGTERM"; exit 1; fi
echo "prometheus: ok"
