#!/usr/bin/python3
"""A RabbitMQ cluster on loopback for tests and benchmarks (Debian's rabbitmq-server 3.10).

    /usr/bin/python3 tests/tools/rabbitmq_cluster.py start DIR --nodes N [--owner PID]
    /usr/bin/python3 tests/tools/rabbitmq_cluster.py stop DIR
    /usr/bin/python3 tests/tools/rabbitmq_cluster.py kill DIR I
    /usr/bin/python3 tests/tools/rabbitmq_cluster.py ctl DIR I ARGS...

Run as root. Every node runs as the `rabbitmq` user (set in the child before exec, as runuser
would, but with no process in between: the pid started is beam.smp's), with its own under DIR:
node name ferry<random>-<i>@localhost, data (RABBITMQ_MNESIA_BASE), logs, rabbitmq.conf,
the enabled-plugins file (rabbitmq_mqtt only), and its ports: MQTT, AMQP and Erlang
distribution, all on 127.0.0.1 and picked free by this tool. The cluster has its own epmd
(ERL_EPMD_PORT, 127.0.0.1 only) and one Erlang cookie. Nothing touches /etc/rabbitmq,
/var/lib/rabbitmq or the packaged service.

start: node 0 boots alone (it lists no peers); once its database runs, the others boot
together and join it through classic_config peer discovery (RabbitMQ's peer discovery lock
lets one join at a time), each adding itself to the MQTT plugin's Raft cluster that tracks
client ids (it needs a majority: 2 of 3). Ready when every MQTT listener answers CONNECT with
CONNACK 0, the cluster runs all N nodes (as `rabbitmqctl cluster_status` lists
running_nodes) and every node's own view of that Raft cluster has all N members; these
checks go through erl_call (~30 ms; rabbitmqctl needs ~2 s of CPU to start). Writes
DIR/cluster.json and prints it: {"nodes":[{"name","mqtt_port","amqp_port","dist_port","pid"}],
"epmd_port","epmd_pid","start_seconds",...} (pid: the node's beam.smp). Exit 0 when ready;
1 with the reason (and the node's log tail) if not, after stopping what it started.

--owner PID: a watch process stops the cluster once PID is gone (a test runner killed by
ctest's timeout runs no destructor), and ends by itself after a stop.

stop: SIGTERM to every node (a clean RabbitMQ shutdown) and then the epmd, by the pids in
cluster.json (each checked to still be that process); SIGKILL whatever is left after the
grace period. kill: SIGKILL node I's beam.smp (a hard node failure), wait until it is gone.
ctl: rabbitmqctl ARGS against node I, its output and exit code passed through (e.g.
`ctl DIR 0 list_queues name messages`).
"""

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

RMQ_BIN = "/usr/lib/rabbitmq/bin"
EPMD = "/usr/lib/erlang/bin/epmd"
ERL_CALL = "/usr/lib/erlang/bin/erl_call"
USER = "rabbitmq"
HOST = "127.0.0.1"
NODE_BOOT_TIMEOUT = 90.0  # one node on a loaded 2-core CI machine boots in ~5-10 s
STOP_GRACE = 15.0


def fail(msg):
    print(f"rabbitmq_cluster: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def free_ports(n):
    """n distinct TCP ports on 127.0.0.1 that were free a moment ago (held together while
    picked, so no two are the same)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid):
    """True while pid runs (a zombie counts as gone: nobody may reap an orphaned node)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def is_ours(pid, marker):
    """pid is still the process we started: its command line names our directory."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def start_time(pid):
    """When pid started (in clock ticks since boot, as /proc says), or None when it does not
    run: a pid and its start time name one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def wait_gone(pids, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def mqtt_connack(port, client_id, timeout=2.0):
    """CONNECT (MQTT 3.1.1, clean session) to 127.0.0.1:port; the CONNACK return code, or
    None when nothing answers (listener not up, or closed without CONNACK)."""
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, keepalive 10
    body = var + struct.pack("!H", len(cid)) + cid
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            ack = b""
            while len(ack) < 4:
                chunk = s.recv(4 - len(ack))
                if not chunk:
                    return None
                ack += chunk
            s.sendall(b"\xe0\x00")  # DISCONNECT
            return ack[3] if ack[0] == 0x20 else None
    except OSError:
        return None


def tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return f"(no {path})"


class cluster:
    def __init__(self, d):
        self.dir = os.path.abspath(d)
        self.home = os.path.join(self.dir, "home")  # HOME of nodes and rabbitmqctl: the cookie
        self.state_file = os.path.join(self.dir, "cluster.json")
        self.pw = pwd.getpwnam(USER)

    # --- the environment every node and rabbitmqctl run with --------------------------------
    def node_dir(self, i):
        return os.path.join(self.dir, f"node-{i}")

    def env(self, st, i):
        nd = self.node_dir(i)
        n = st["nodes"][i]
        e = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": n["name"],
            "RABBITMQ_MNESIA_BASE": os.path.join(nd, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(nd, "log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(nd, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(nd, "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(nd, "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_PID_FILE": os.path.join(nd, "beam.pid"),
            "RABBITMQ_DIST_PORT": str(n["dist_port"]),
            "ERL_EPMD_PORT": str(st["epmd_port"]),
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_CRASH_DUMP_SECONDS": "0",
            # rabbitmqctl's own Erlang node listens on one port picked for this cluster, not
            # the package's fixed 35672-35682 shared by every cluster on the machine.
            "RABBITMQ_CTL_DIST_PORT_MIN": str(st["ctl_dist_port"]),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(st["ctl_dist_port"]),
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # ALLOW_INPUT makes rabbitmq-server exec the VM instead of waiting on it from a
            # shell, so the pid we start is beam.smp's; -noinput still keeps stdin closed.
            "RABBITMQ_ALLOW_INPUT": "1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}",
        }
        return e

    def as_rabbitmq(self):
        return dict(user=self.pw.pw_uid, group=self.pw.pw_gid, extra_groups=[])

    def load(self):
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except OSError as e:
            fail(f"no cluster in {self.dir}: {e}")

    def save(self, st):
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, self.state_file)

    def own(self, path):
        os.chown(path, self.pw.pw_uid, self.pw.pw_gid)

    # --- start -------------------------------------------------------------------------------
    def prepare(self, n):
        os.makedirs(self.dir, exist_ok=True)
        # The nodes run as rabbitmq: they must reach DIR (a test's temp dir is 0700 root).
        os.chmod(self.dir, os.stat(self.dir).st_mode | 0o711)
        up = os.path.dirname(self.dir)
        while up != "/":
            if not os.stat(up).st_mode & 0o001:
                fail(f"{up} is not searchable by others: the rabbitmq user could not reach "
                     f"{self.dir}")
            up = os.path.dirname(up)
        if os.path.exists(self.state_file):
            fail(f"{self.state_file} exists: stop that cluster first")
        tag = secrets.token_hex(3)
        ports = free_ports(3 * n + 2)
        st = {
            "nodes": [],
            "epmd_port": ports[3 * n],
            "ctl_dist_port": ports[3 * n + 1],
            "epmd_pid": None,
            "dir": self.dir,
        }
        for i in range(n):
            st["nodes"].append({
                "name": f"ferry{tag}-{i}@localhost",
                "mqtt_port": ports[3 * i],
                "amqp_port": ports[3 * i + 1],
                "dist_port": ports[3 * i + 2],
                "pid": None,
            })
        os.makedirs(self.home, exist_ok=True)
        self.own(self.home)
        cookie = os.path.join(self.home, ".erlang.cookie")
        with open(cookie, "w") as f:
            f.write(secrets.token_hex(16).upper())
        os.chmod(cookie, 0o400)
        self.own(cookie)
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_mqtt].\n")
        for i, node in enumerate(st["nodes"]):
            nd = self.node_dir(i)
            for sub in ("", "mnesia", "log"):
                os.makedirs(os.path.join(nd, sub), exist_ok=True)
                self.own(os.path.join(nd, sub))
            conf = [
                f"listeners.tcp.default = {HOST}:{node['amqp_port']}",
                f"mqtt.listeners.tcp.default = {HOST}:{node['mqtt_port']}",
                "mqtt.allow_anonymous = true",
                "mqtt.default_user = guest",
                "mqtt.default_pass = guest",
                # Tests fill a small disk now and then; a cluster that blocks publishers at
                # the default 50 MB free would look like a Ferry failure.
                "disk_free_limit.absolute = 1MB",
                "log.file.level = info",
                # A joining node retries until node 0 answers; the default (10 x 500 ms) is
                # shorter than a boot on a loaded CI machine, and then it would boot alone.
                "cluster_formation.discovery_retry_limit = 300",
                "cluster_formation.discovery_retry_interval = 200",
                "log.console = false",
            ]
            if i > 0:
                # Join while booting: no stop_app/join_cluster/start_app round trip through
                # rabbitmqctl, and no standalone MQTT Raft cluster to throw away. Node 0 lists
                # no peers, so it never waits for them: it boots alone and is the seed.
                conf += ["cluster_formation.peer_discovery_backend = classic_config"]
                conf += [f"cluster_formation.classic_config.nodes.{k + 1} = {m['name']}"
                         for k, m in enumerate(st["nodes"])]
            with open(os.path.join(nd, "rabbitmq.conf"), "w") as f:
                f.write("\n".join(conf) + "\n")
        self.save(st)
        return st

    def start_epmd(self, st):
        log = open(os.path.join(self.dir, "epmd.log"), "ab")
        p = subprocess.Popen([EPMD, "-port", str(st["epmd_port"]), "-address", HOST],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, env={"PATH": "/usr/bin:/bin"},
                             **self.as_rabbitmq())
        st["epmd_pid"] = p.pid
        self.save(st)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection((HOST, st["epmd_port"]), timeout=1).close()
                return
            except OSError:
                if p.poll() is not None:
                    break
                time.sleep(0.02)
        raise RuntimeError(f"epmd did not listen on {st['epmd_port']}: "
                           + tail(os.path.join(self.dir, "epmd.log")))

    def start_node(self, st, i):
        nd = self.node_dir(i)
        out = open(os.path.join(nd, "stdout.log"), "ab")
        p = subprocess.Popen([os.path.join(RMQ_BIN, "rabbitmq-server")],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=nd,
                             start_new_session=True, env=self.env(st, i), **self.as_rabbitmq())
        st["nodes"][i]["pid"] = p.pid  # sh, then erl, then erlexec exec into beam.smp
        self.save(st)
        return p

    def erl_call(self, st, i, expr, timeout=5.0):
        """Evaluates an Erlang expression on node i through erl_call (a C client: ~30 ms,
        where rabbitmqctl takes ~2 s of CPU to start); its result term, or None when the node
        does not answer."""
        with open(os.path.join(self.home, ".erlang.cookie")) as f:
            cookie = f.read().strip()
        try:
            r = subprocess.run([ERL_CALL, "-n", st["nodes"][i]["name"], "-c", cookie, "-e",
                                "-timeout", str(int(timeout))], input=expr + "\n", text=True,
                               capture_output=True, timeout=timeout + 2,
                               env={"ERL_EPMD_PORT": str(st["epmd_port"]), "HOME": self.home})
        except subprocess.TimeoutExpired:
            return None
        out = r.stdout.strip()
        return out[len("{ok, "):-1] if r.returncode == 0 and out.startswith("{ok, ") else None

    def names(self, st, i, expr):
        """The node names an expression evaluating to a list of nodes gives on node i, sorted;
        None when the node does not answer."""
        out = self.erl_call(st, i, f"string:join([atom_to_list(N) || N <- {expr}], \" \").")
        return None if out is None else sorted(out.strip('"').split())

    def wait_for(self, what, i, p, pred):
        end = time.monotonic() + NODE_BOOT_TIMEOUT
        while time.monotonic() < end:
            if p.poll() is not None:
                raise RuntimeError(f"node {i} exited with {p.returncode} while booting:\n"
                                   + self.node_log_tail(i))
            if pred():
                return
            time.sleep(0.1)
        raise RuntimeError(f"node {i}: {what} not within {NODE_BOOT_TIMEOUT:.0f} s:\n"
                           + self.node_log_tail(i))

    def node_log_tail(self, i):
        n = self.load()["nodes"][i]
        return (tail(os.path.join(self.node_dir(i), "stdout.log"), 10)
                + tail(os.path.join(self.node_dir(i), "log", n["name"] + ".log")))

    def start(self, n, owner=0):
        if n < 1:
            fail("--nodes must be at least 1")
        t0 = time.monotonic()
        st = self.prepare(n)
        try:
            if owner:
                self.start_watch(st, owner)
            self.start_epmd(st)
            procs = [self.start_node(st, 0)]
            # The others boot together once node 0's database runs (core_started comes after
            # the database boot step): most of a boot is loading code, which they then do on
            # both cores at once. RabbitMQ's peer discovery lock lets one join at a time.
            # Node 0's MQTT plugin meanwhile waits 3-6 s for peers and then forms the
            # client-id Raft cluster; the others add themselves to it as they start.
            if n > 1:
                self.wait_for("core_started", 0, procs[0], lambda: self.erl_call(
                    st, 0, "rabbit_boot_state:get().") in ("core_started", "ready"))
                procs += [self.start_node(st, i) for i in range(1, n)]
            for i, p in enumerate(procs):
                # CONNACK 0 proves the listener is up and the client-id Raft cluster takes
                # registrations (3 = server unavailable while it has no leader).
                port = st["nodes"][i]["mqtt_port"]
                self.wait_for(f"CONNACK 0 on MQTT port {port}", i, p,
                              lambda: mqtt_connack(port, f"ferry-probe-{i}") == 0)
            want = sorted(x["name"] for x in st["nodes"])
            # As `rabbitmqctl cluster_status` lists running_nodes; and every node must be a
            # member of the MQTT plugin's Raft cluster, or losing one could cost the majority.
            running = self.names(st, 0, "rabbit_mnesia:cluster_nodes(running)")
            if running != want:
                raise RuntimeError(f"running nodes {running}, expected {want}")
            # Each node's own view ({local, ...}), not only the leader's: a node that started
            # with another member list than the leader's would show here.
            for i in range(n):
                members = None
                end = time.monotonic() + 10
                while members != want and time.monotonic() < end:
                    members = self.names(st, i, "case ra:members({local, {mqtt_node, node()}}) "
                                         "of {ok, M, _} -> [N || {_, N} <- M]; _ -> [] end")
                    if members != want:
                        time.sleep(0.2)
                if members != want:
                    raise RuntimeError(f"node {i}: MQTT client-id Raft members {members}, "
                                       f"expected {want}")
        except (RuntimeError, OSError) as e:
            self.stop()
            fail(str(e))
        st["start_seconds"] = round(time.monotonic() - t0, 2)
        self.save(st)
        print(json.dumps(st), flush=True)

    # --- the owner's watch ---------------------------------------------------------------------
    def start_watch(self, st, owner):
        born = start_time(owner)
        if born is None:
            raise RuntimeError(f"--owner {owner}: no such process")
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "watch", self.dir,
                              str(owner), born], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        st["watch_pid"] = p.pid
        self.save(st)

    def watch(self, owner, born):
        """Stops the cluster once its owner is gone (a test runner killed by a timeout runs no
        destructor); ends by itself once the cluster is stopped."""
        while os.path.exists(self.state_file):
            if start_time(owner) != born:
                self.stop()
                return
            time.sleep(0.5)

    # --- stop, kill, ctl ---------------------------------------------------------------------
    def stop(self):
        if not os.path.exists(self.state_file):
            return
        st = self.load()
        nodes = [n["pid"] for n in st["nodes"] if n.get("pid") and alive(n["pid"])
                 and is_ours(n["pid"], self.home)]
        for pid in nodes:
            signal_pid(pid, signal.SIGTERM)
        if not wait_gone(nodes, STOP_GRACE):
            for pid in nodes:
                if alive(pid):
                    signal_pid(pid, signal.SIGKILL)
            wait_gone(nodes, 5)
        epmd = st.get("epmd_pid")
        if epmd and alive(epmd) and is_ours(epmd, str(st["epmd_port"])):
            signal_pid(epmd, signal.SIGTERM)
            if not wait_gone([epmd], 5):
                signal_pid(epmd, signal.SIGKILL)
                wait_gone([epmd], 5)
        try:
            os.replace(self.state_file, self.state_file + ".stopped")
        except FileNotFoundError:  # a concurrent stop got there first
            pass

    def kill(self, i):
        st = self.load()
        if not 0 <= i < len(st["nodes"]):
            fail(f"no node {i} (the cluster has {len(st['nodes'])})")
        pid = st["nodes"][i]["pid"]
        if pid and alive(pid) and is_ours(pid, self.home):
            signal_pid(pid, signal.SIGKILL)
            if not wait_gone([pid], 10):
                fail(f"node {i} (pid {pid}) still there 10 s after SIGKILL")

    def ctl(self, st, i, args, capture=False):
        return subprocess.run([os.path.join(RMQ_BIN, "rabbitmqctl"), "-n",
                               st["nodes"][i]["name"]] + list(args),
                              stdin=subprocess.DEVNULL, env=self.env(st, i), cwd=self.home,
                              capture_output=capture, text=True, **self.as_rabbitmq())


USAGE = """usage: rabbitmq_cluster.py start DIR --nodes N [--owner PID]
       rabbitmq_cluster.py stop DIR
       rabbitmq_cluster.py kill DIR I
       rabbitmq_cluster.py ctl DIR I ARGS..."""


def main(argv):
    if len(argv) < 2 or argv[0] not in ("start", "stop", "kill", "ctl", "watch"):
        print(USAGE, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        fail("run as root: the nodes run as the rabbitmq user")
    if shutil.which("rabbitmq-server", path=RMQ_BIN) is None:
        fail(f"no {RMQ_BIN}/rabbitmq-server: install Debian's rabbitmq-server")
    cmd, c = argv[0], cluster(argv[1])
    try:
        if cmd == "start":
            opts = dict(zip(argv[2::2], argv[3::2]))
            if len(argv) % 2 or "--nodes" not in opts or set(opts) - {"--nodes", "--owner"}:
                print(USAGE, file=sys.stderr)
                return 2
            c.start(int(opts["--nodes"]), int(opts.get("--owner", 0)))
        elif cmd == "watch":
            c.watch(int(argv[2]), argv[3])
        elif cmd == "stop":
            c.stop()
        elif cmd == "kill":
            c.kill(int(argv[2]))
        else:
            st = c.load()
            i = int(argv[2])
            if not 0 <= i < len(st["nodes"]):
                fail(f"no node {i} (the cluster has {len(st['nodes'])})")
            return c.ctl(st, i, argv[3:]).returncode
    except (ValueError, IndexError):
        print(USAGE, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
