#!/usr/bin/env bash
# Runs the shipped unit under a real systemd: boots this machine's own systemd (its /usr, on an
# empty tmpfs root) in a systemd-nspawn container, installs buffdbd as the README does (binary,
# unit, sysusers.d file, config file), and checks from inside that
#   - the service becomes active, which for Type=notify means buffdbd sent READY=1 while running
#     under every hardening setting of the unit (seccomp filter, MemoryDenyWriteExecute,
#     PrivateUsers, ProtectSystem=strict, an empty capability set, ...);
#   - it runs as the buffdbd user on the directories systemd made for it;
#   - root's CLI reaches it through the socket link in /var/lib/buffdbd, and a model round-trips;
#   - a `buffdbd fetch` from a Hub emulator (scripts/hubserve.go) runs in the service (outbound
#     TCP, its cache directory) and the fetched model pulls back;
#   - /healthz and /metrics answer;
#   - its watchdog pings arrive (WatchdogSec shortened to 2s by a drop-in: no restart over 6s);
#   - systemctl reload (ExecReload: SIGHUP) leaves the same process serving;
#   - data survives `systemctl restart`, and `systemctl stop` ends it cleanly (exit 0);
#   - its journal holds no error and no "operation not permitted".
# systemd-analyze only reads the unit; this is where a setting that breaks the daemon shows.
set -euo pipefail
cd "$(dirname "$0")/../.."

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
tmp=$(mktemp -d)
trap '$sudo rm -rf "$tmp"' EXIT

mkdir -p "$tmp/bin" "$tmp/system/multi-user.target.wants" "$tmp/system/buffdbd.service.d" "$tmp/out"
CGO_ENABLED=0 go build -o "$tmp/bin/buffdbd" ./cmd/buffdbd
cp deploy/systemd/buffdbd.service "$tmp/system/buffdbd.service"
printf '[Service]\nWatchdogSec=2s\n' >"$tmp/system/buffdbd.service.d/watchdog.conf"
ln -s ../buffdbd.service "$tmp/system/multi-user.target.wants/buffdbd.service"
ln -s ../buffdbd-probe.service "$tmp/system/multi-user.target.wants/buffdbd-probe.service"
cat >"$tmp/system/buffdbd-probe.service" <<'EOF'
[Unit]
Description=buffdbd boot test
Wants=buffdbd.service
After=buffdbd.service

[Service]
Type=oneshot
ExecStart=/bin/bash /usr/local/bin/probe.sh
StandardOutput=append:/out/probe.log
StandardError=inherit
# Whatever the outcome, the container ends (SuccessAction= did not power it off here).
ExecStopPost=/bin/sh -c 'systemctl --no-block poweroff >/dev/null 2>&1 || true'
EOF

cat >"$tmp/bin/probe.sh" <<'EOF'
set -uo pipefail
exec 2>&1
fail() {
  echo "FAIL: $*"
  systemctl status --no-pager buffdbd
  journalctl --no-pager -u buffdbd | tail -40
  exit 1
}
prop() { systemctl show -P "$1" buffdbd; }
# run CMD...: runs a command quietly, failing with its output.
run() { "$@" >/tmp/cmd.out 2>&1 || { cat /tmp/cmd.out; fail "$*"; }; }

echo "-- started (READY=1 under the unit's hardening)"
[ "$(systemctl is-active buffdbd)" = active ] || fail "buffdbd is not active"
pid=$(prop MainPID)
[ "$(stat -c %U /proc/$pid)" = buffdbd ] || fail "runs as $(stat -c %U /proc/$pid), not buffdbd"
[ "$(stat -c '%U %a' /var/lib/buffdbd)" = "buffdbd 700" ] || fail "/var/lib/buffdbd: $(stat -c '%U %a' /var/lib/buffdbd)"
[ -S /run/buffdbd/buffdbd.sock ] || fail "no socket /run/buffdbd/buffdbd.sock"
[ -e /var/lib/buffdbd/buffdbd.sock ] || fail "no socket link in /var/lib/buffdbd"

echo "-- the CLI reaches the service through its socket; a model round-trips"
run buffdbd kv set boot:key value
[ "$(buffdbd kv get boot:key)" = value ] || fail "kv get"
run buffdbd model push /usr/local/bin/buffdbd --name boot/test --version v1
run buffdbd model pull boot/test:v1 -o /tmp/pulled
cmp /usr/local/bin/buffdbd /tmp/pulled/buffdbd || fail "pulled file differs"

echo "-- a Hugging Face fetch runs in the service, under its hardening (network, cache dir)"
hubserve /tmp/endpoint &
for _ in $(seq 100); do [ -s /tmp/endpoint ] && break; sleep 0.1; done
[ -s /tmp/endpoint ] || fail "the Hub emulator did not start"
run buffdbd fetch hf:org/model --endpoint "$(cat /tmp/endpoint)"
run buffdbd model pull org/model@main -o /tmp/fetched
[ "$(stat -c %s /tmp/fetched/model.safetensors)" = 3145728 ] || fail "fetched weights have the wrong size"
[ -n "$(ls -A /var/cache/buffdbd)" ] || fail "the fetch did not use the cache directory systemd made"

echo "-- /healthz and /metrics"
run curl -fsS http://127.0.0.1:9314/healthz
run curl -fsS -o /tmp/metrics http://127.0.0.1:9314/metrics
grep -q '^grpc_server_handled_total{.*grpc_method="Push"' /tmp/metrics || fail "/metrics does not count the push"

echo "-- watchdog pings arrive"
sleep 6
[ "$(systemctl is-active buffdbd)" = active ] || fail "not active after 3 watchdog intervals"
[ "$(prop NRestarts)" = 0 ] || fail "restarted $(prop NRestarts) times: the watchdog pings do not arrive"
[ "$(prop MainPID)" = "$pid" ] || fail "main process changed"

echo "-- systemctl reload (SIGHUP) re-reads the configuration and keeps serving"
run systemctl reload buffdbd
[ "$(systemctl is-active buffdbd)" = active ] || fail "not active after reload"
[ "$(prop MainPID)" = "$pid" ] || fail "reload replaced the main process"
journalctl --no-pager -u buffdbd -o cat | grep -q "configuration reloaded" || fail "no reload in the journal"
[ "$(buffdbd kv get boot:key)" = value ] || fail "kv get after reload"

echo "-- restart keeps the data; stop is clean"
run systemctl restart buffdbd
grep -q boot/test <<<"$(buffdbd model ls)" || fail "model gone after restart"
[ "$(buffdbd kv get boot:key)" = value ] || fail "kv value gone after restart"
systemctl stop buffdbd
[ "$(prop Result)" = success ] || fail "stop: result $(prop Result)"
[ "$(prop ExecMainStatus)" = 0 ] || fail "stop: exit status $(prop ExecMainStatus)"

echo "-- the journal"
journalctl --no-pager -u buffdbd -o cat >/tmp/journal
if grep -Ei 'level=error|"level":"error"|operation not permitted|permission denied|panic' /tmp/journal; then
  fail "errors in the journal"
fi
grep -q "" /tmp/journal || fail "nothing in the journal"
echo ok >/out/result
EOF

# The Hub emulator runs inside the container, on its own loopback.
go build -o "$tmp/bin/hubserve" scripts/hubserve.go

cp configs/buffdbd.yaml "$tmp/buffdbd.yaml"
echo "-- booting systemd in a container"
# The container's root is an empty tmpfs with this machine's /usr (--volatile=yes); the unit
# files, the binary and the config are bound in read-only, /out collects the probe's report.
# No machined and no D-Bus on the host: --register=no --keep-unit. --private-network: the
# container has its own loopback, so the service's fixed ports (9313, 9314) cannot collide with
# a buffdbd or anything else listening on the host's.
if ! timeout 120 $sudo systemd-nspawn --quiet -D / --volatile=yes --register=no --keep-unit \
  --machine="buffdbd-boot-$$" --private-network \
  --bind-ro="$tmp/bin:/usr/local/bin" \
  --bind-ro="$tmp/system:/etc/systemd/system" \
  --bind-ro="$PWD/deploy/systemd/buffdbd.sysusers:/etc/sysusers.d/buffdbd.conf" \
  --bind-ro="$tmp/buffdbd.yaml:/etc/buffdbd/buffdbd.yaml" \
  --bind="$tmp/out:/out" \
  --console=pipe -b </dev/null >"$tmp/console.log" 2>&1; then
  echo "systemd-nspawn failed or timed out"
fi
cat "$tmp/out/probe.log" 2>/dev/null || { echo "no probe report; console:"; tail -40 "$tmp/console.log"; }
[ "$(cat "$tmp/out/result" 2>/dev/null)" = ok ] || { echo "FAIL: buffdbd under systemd"; exit 1; }
echo "systemd boot: ok"
