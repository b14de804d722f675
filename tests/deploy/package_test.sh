#!/usr/bin/env bash
# The Debian package as an admin meets it: built by scripts/package from this build dir,
# installed with dpkg -i, then checked: the system user, /var/lib/ferry, the conffile,
# `ferry check -c /etc/ferry/ferry.yaml` (also as the ferry user), `systemd-analyze verify`
# of the installed unit, a reinstall (postinst twice), and purge. It leaves the machine as
# it found it: purged, and the ferry user removed again if this test made it.
#   package_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=${1:?source dir} build=${2:?build dir}
[ "$(id -u)" -eq 0 ] || { echo "SKIP: installing a package needs root"; exit 77; }
if dpkg-query -W -f='${Status}' ferry 2>/dev/null | grep -q 'ok installed'; then
  echo "SKIP: a ferry package is already installed here; not touching it"
  exit 77
fi
had_user=0 had_group=0
getent passwd ferry >/dev/null && had_user=1
getent group ferry >/dev/null && had_group=1
cleanup() {
  dpkg --purge ferry >/dev/null 2>&1 || true
  if [ "$had_user" = 0 ] && getent passwd ferry >/dev/null; then userdel ferry || true; fi
  if [ "$had_group" = 0 ] && getent group ferry >/dev/null; then groupdel ferry || true; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

deb=$("$src/scripts/package" "$build")
echo "package: $deb ($(du -k "$deb" | cut -f1) KiB)"
dpkg-deb -f "$deb" Package Version Architecture Depends
[ "$(dpkg-deb -f "$deb" Architecture)" = "$(dpkg --print-architecture)" ] || fail "wrong architecture"

dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
[ -x /usr/bin/ferry ] || fail "/usr/bin/ferry missing"
file_out=$(readelf -S /usr/bin/ferry 2>/dev/null | grep -c '\.debug_info' || true)
[ "$file_out" = 0 ] || fail "/usr/bin/ferry is not stripped"
/usr/bin/ferry version
/usr/bin/ferry check -c /etc/ferry/ferry.yaml || fail "ferry check on the installed config"
runuser -u ferry -- /usr/bin/ferry check -c /etc/ferry/ferry.yaml >/dev/null ||
  fail "the ferry user cannot read and validate /etc/ferry/ferry.yaml"
echo "ok: ferry check -c /etc/ferry/ferry.yaml passes (as root and as the ferry user)"

# The shipped profiles are where gateway.profiles_dir points by default (docs/PROFILES.md).
profile_cfg=$(mktemp /tmp/ferry-profile-XXXXXX.yaml)
printf '%s\n' 'gateway: { id: pkg }' 'devices:' \
  '  - { id: "m{unit_id}", driver: modbus_rtu, serial: { port: /dev/ttyUSB0 }, unit_id: "1-3", profile: eastron_sdm630 }' \
  >"$profile_cfg"
[ "$(/usr/bin/ferry check --expand -c "$profile_cfg" | grep -c 'name: energy_total,')" = 3 ] ||
  fail "the installed profile eastron_sdm630 is not found by default"
rm -f "$profile_cfg"
echo "ok: /usr/share/ferry/profiles/eastron_sdm630.yaml found by name"

getent passwd ferry | grep -q ':/var/lib/ferry:/usr/sbin/nologin$' || fail "user ferry: $(getent passwd ferry)"
id -nG ferry | tr ' ' '\n' | grep -qx dialout || fail "user ferry is not in dialout"
[ "$(stat -c '%U:%G %a' /var/lib/ferry)" = "ferry:ferry 750" ] ||
  fail "/var/lib/ferry is $(stat -c '%U:%G %a' /var/lib/ferry)"
dpkg-query -W -f='${Conffiles}\n' ferry | grep -q '^ /etc/ferry/ferry.yaml ' ||
  fail "/etc/ferry/ferry.yaml is not a conffile"
[ -f /lib/systemd/system/ferry.service ] || fail "unit not installed"
if command -v systemd-analyze >/dev/null; then
  out=$(systemd-analyze verify /lib/systemd/system/ferry.service 2>&1) || fail "verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify of the installed unit: $out"
  echo "ok: systemd-analyze verify of the installed unit is clean"
fi
echo "ok: user ferry (dialout), /var/lib/ferry ferry:ferry 750, conffile, unit"

# An edited conffile survives a reinstall (postinst runs again, idempotent).
echo "# edited by the admin" >>/etc/ferry/ferry.yaml
dpkg -i --force-confold "$deb" >/dev/null || fail "reinstall"
tail -n1 /etc/ferry/ferry.yaml | grep -q 'edited by the admin' || fail "reinstall replaced the edited conffile"
echo "ok: reinstall keeps the edited conffile"

dpkg --purge ferry >/dev/null || fail "dpkg --purge"
[ ! -e /usr/bin/ferry ] && [ ! -e /etc/ferry ] && [ ! -e /var/lib/ferry ] &&
  [ ! -e /lib/systemd/system/ferry.service ] || fail "purge left files behind"
echo "ok: purge removes the binary, the unit, /etc/ferry and /var/lib/ferry"
