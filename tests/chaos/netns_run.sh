#!/usr/bin/env bash
# Runs a test binary inside a network namespace of its own (only its loopback, brought up), so
# that the test may take the loopback link down, slow it or make it lose packets without
# touching the machine's network: tests/chaos/network_test.cpp.
#   netns_run.sh [--need-netem] BINARY [ARGS...]
# Exit 77 (ctest: skipped, listed in the summary) with a loud SKIPPED line when the namespace
# cannot be made (not root, a kernel or sandbox that refuses), or with --need-netem when the
# kernel has no netem qdisc.
set -uo pipefail
need_netem=0
if [ "${1:-}" = "--need-netem" ]; then need_netem=1; shift; fi
ns=ferry-test-$$-$RANDOM
skip() {
  echo "SKIPPED (not a pass): $*" >&2
  echo "SKIPPED (not a pass): $*"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "network fault tests need root (ip netns); CI runs as root"
command -v ip >/dev/null && command -v tc >/dev/null || skip "ip/tc (iproute2) not installed"
ip netns add "$ns" 2>/tmp/$ns.err || skip "this kernel refuses network namespaces: $(cat /tmp/$ns.err)"
trap 'ip netns del "$ns" 2>/dev/null; rm -f /tmp/$ns.err' EXIT
ip netns exec "$ns" ip link set lo up || skip "cannot bring up loopback in a namespace"
if [ $need_netem -eq 1 ]; then
  if ! ip netns exec "$ns" tc qdisc add dev lo root netem delay 1ms 2>/tmp/$ns.err; then
    skip "this kernel has no netem qdisc (sch_netem): $(cat /tmp/$ns.err); network delay and loss by netem are not tested here (the MQTT proxy's delay and cut tests still run)"
  fi
  ip netns exec "$ns" tc qdisc del dev lo root
fi
ip netns exec "$ns" "$@"
