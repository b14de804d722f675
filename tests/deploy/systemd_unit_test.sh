#!/usr/bin/env bash
# systemd/ferry.service: `systemd-analyze verify` prints nothing (no unknown key, no bad
# value, every command found) and `systemd-analyze security --offline=true` rates its
# exposure 2.0 or lower. The unit names /usr/bin/ferry; here a copy names the binary just
# built (the package test verifies the installed unit as it is).
#   systemd_unit_test.sh UNIT FERRY_BINARY
set -euo pipefail
unit=${1:?unit file} ferry=${2:?ferry binary}
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze"; exit 77; }
work=$(mktemp -d /tmp/ferry-unit.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Every directive the issue asks for is there (a later edit must not drop one silently).
for want in '^Type=notify$' '^WatchdogSec=' '^Restart=on-failure$' '^ExecReload=/bin/kill -HUP \$MAINPID$' \
  '^StateDirectory=ferry$' '^ConfigurationDirectory=ferry$' '^User=ferry$' '^ProtectSystem=strict$' \
  '^ProtectHome=yes$' '^PrivateTmp=yes$' '^NoNewPrivileges=yes$' '^CapabilityBoundingSet=$' \
  '^RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX$' '^MemoryDenyWriteExecute=yes$' \
  '^SystemCallFilter=@system-service$' '^SupplementaryGroups=dialout$' '^DeviceAllow=char-ttyUSB rw$'; do
  grep -Eq -- "$want" "$unit" || { echo "FAIL: $unit lacks a line matching $want"; exit 1; }
done

sed "s|/usr/bin/ferry|$ferry|g" "$unit" >"$work/ferry.service"
out=$(cd "$work" && systemd-analyze verify ./ferry.service 2>&1) || {
  echo "FAIL: systemd-analyze verify:"; echo "$out"; exit 1
}
[ -z "$out" ] || { echo "FAIL: systemd-analyze verify is not clean:"; echo "$out"; exit 1; }
echo "ok: systemd-analyze verify is clean"

report=$(systemd-analyze security --offline=true "$unit" 2>&1) || true
level=$(sed -n 's/.*Overall exposure level for ferry.service: \([0-9.]*\).*/\1/p' <<<"$report")
[ -n "$level" ] || { echo "FAIL: no exposure level in:"; echo "$report"; exit 1; }
echo "exposure level: $level (limit 2.0)"
awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }' || {
  grep '✗' <<<"$report"; echo "FAIL: exposure $level > 2.0"; exit 1
}
# The same limit through systemd's own threshold (0..100 scale), as an admin would run it.
systemd-analyze security --offline=true --threshold=20 "$unit" >/dev/null 2>&1 ||
  { echo "FAIL: systemd-analyze security --threshold=20 failed"; exit 1; }
echo "ok: systemd-analyze security --offline=true: $level <= 2.0"
