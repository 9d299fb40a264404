#!/usr/bin/env bash
# Checks deploy/systemd: the unit passes `systemd-analyze verify` (pointing ExecStart at a freshly
# built binary, since /usr/local/bin/buffdbd is not installed here), `systemd-analyze security
# --offline=true` rates its exposure "OK" or better, and the sysusers.d file creates the buffdbd
# user in a scratch root.
set -euo pipefail
cd "$(dirname "$0")/../.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

CGO_ENABLED=0 go build -o "$tmp/buffdbd" ./cmd/buffdbd
mkdir -p "$tmp/unit"
sed "s#^ExecStart=/usr/local/bin/buffdbd #ExecStart=$tmp/buffdbd #" deploy/systemd/buffdbd.service >"$tmp/unit/buffdbd.service"
grep -q "^ExecStart=$tmp/buffdbd run" "$tmp/unit/buffdbd.service" || { echo "FAIL: ExecStart line not found in unit"; exit 1; }

echo "-- systemd-analyze verify"
if ! systemd-analyze verify "$tmp/unit/buffdbd.service" 2>"$tmp/verify.err"; then
  cat "$tmp/verify.err"; echo "FAIL: systemd-analyze verify"; exit 1
fi
# verify exits 0 on some warnings; any line mentioning our unit is a problem to fix.
if grep -i "buffdbd" "$tmp/verify.err"; then echo "FAIL: systemd-analyze verify warnings"; exit 1; fi

echo "-- systemd-analyze security --offline=true"
systemd-analyze security --offline=true --no-pager "$tmp/unit/buffdbd.service" >"$tmp/security.out" 2>&1 || true
line=$(grep "Overall exposure level" "$tmp/security.out" || true)
echo "$line"
case "$line" in
  *" SAFE"* | *" OK"*) ;;
  *) cat "$tmp/security.out"; echo "FAIL: exposure level worse than OK"; exit 1 ;;
esac

echo "-- the binary understands the unit's command line"
"$tmp/buffdbd" run --help >/dev/null
"$tmp/buffdbd" config check --config configs/buffdbd.yaml >/dev/null

echo "-- sysusers.d"
mkdir -p "$tmp/root/etc"
touch "$tmp/root/etc/passwd" "$tmp/root/etc/group"
systemd-sysusers --root="$tmp/root" "$PWD/deploy/systemd/buffdbd.sysusers" >/dev/null 2>&1
grep -q '^buffdbd:x:[0-9]*:[0-9]*:.*:/var/lib/buffdbd:/usr/sbin/nologin$' "$tmp/root/etc/passwd" || {
  cat "$tmp/root/etc/passwd"; echo "FAIL: sysusers did not create the buffdbd user"; exit 1; }
echo "systemd: ok"
