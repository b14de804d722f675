#!/usr/bin/python3
"""A fleet of Ferry gateways into a clustered broker, measured (issue 19). Not a test.

Usage: ./scripts/fleet [N] [--duration S] [--broker rabbitmq|mosquitto] [--consumers K]
                       [--poll MS] [--fsync always|batch|never] [--kill-node I] [--no-mirror]
                       [--mqtt-version V] [--json FILE] [--keep]

Starts, all on 127.0.0.1:
- the broker: a 3-node RabbitMQ cluster (tests/tools/rabbitmq_cluster.py) whose consumers'
  subscription queues are mirrored (policy ha-mode all; --no-mirror leaves RabbitMQ's
  default, under which a consumer cannot fail over from a dead node), or one mosquitto
  (--broker mosquitto, for comparison);
- one libmodbus simulator (tests/tools/modbus_sim.cpp, --wave) that every gateway polls
  over its own TCP connection: one single-threaded process serving N connections costs
  less than N processes, and its CPU is measured and printed apart;
- K reference consumers (tools/ferry_consumer.py) writing one SQLite file: on mosquitto a
  shared subscription, on RabbitMQ (which has none) each its own part of the gateways'
  topics; broker uris over every node;
- N `ferry run`, each with its own data_dir, HTTP port and config: one device of 8 points
  polled every --poll ms, one rule (batch max_age 1s) to plant/{gateway}/{device} at QoS 1,
  `uris` over the three nodes, starting from node i % 3.

Then it measures a window of --duration seconds (default 120) once every gateway has
delivered (--kill-node I: node I is SIGKILLed halfway through it, and the time until every
gateway that was on it is connected again is measured): per gateway CPU (utime + stime of /proc/PID/stat over the window, as % of one
core) and memory (VmRSS sampled every 5 s, VmHWM at the end), the broker nodes', the
simulator's and the consumers' CPU and memory, the whole machine's CPU (/proc/stat: what
other sessions used shows up as "others"), and the consumers' ingest (messages and readings
stored in the window, by their received_ms). Then a draining stop: every gateway reloads a
config without devices (SIGHUP), so it produces nothing more while its spool empties; once
every ferry_spool_messages is 0 the consumers' readings per gateway are compared with
ferry_events_delivered_total from /metrics, and `ferry_consumer.py report` gives the gaps.
Prints a table and writes the JSON (default build/fleet/fleet-N-STAMP.json). Numbers go to
docs/SCALE.md.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "tests/tools/rabbitmq_cluster.py")
CONSUMER = os.path.join(ROOT, "tools/ferry_consumer.py")
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"fleet: {msg}", file=sys.stderr, flush=True)


def free_ports(n):
    """n distinct TCP ports of 127.0.0.1 that were free a moment ago: held together while
    picked, since one at a time the kernel may hand the same port out twice (two gateways
    then race for one HTTP port and one of them exits)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    return free_ports(1)[0]


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def wait_until(pred, seconds, step=0.2):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return None


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def machine_jiffies():
    """(busy, total) jiffies of all cores from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Procs:
    """Every process the run starts, stopped by pid (SIGTERM, then SIGKILL) at the end."""

    def __init__(self):
        self.procs = []

    def start(self, argv, log_path, **kw):
        p = subprocess.Popen(argv, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, procs, grace=15):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(max(0.1, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes

    def stop_all(self):
        self.stop([p for p in self.procs if p.poll() is None], grace=10)


PLANT_POINTS = """\
      - { name: counter, address: 0, type: uint16 }
      - { name: temperature, address: 2, type: float32, unit: degC }
      - { name: delta, address: 4, type: int16 }
      - { name: flow, address: 10, type: uint16, scale: 0.1, unit: m3/h }
      - { name: pressure, address: 11, type: uint16, scale: 0.01, unit: bar }
      - { name: level, address: 12, type: uint16, unit: mm }
      - { name: power, address: 13, type: float32, unit: kW }
      - { name: state, address: 15, type: uint16 }
"""
POINTS_PER_GATEWAY = PLANT_POINTS.count("name:")
SIM_SETS = ["holding:10=u16:412", "holding:11=u16:250", "holding:12=u16:1830",
            "holding:13=f32:7.5", "holding:15=u16:1"]


def ferry_yaml(gw, data_dir, http_port, sim_port, uris, version, poll_ms, fsync, devices=True):
    dev = (f"""devices:
  - id: plc
    driver: modbus_tcp
    host: 127.0.0.1
    port: {sim_port}
    poll_interval: {poll_ms}ms
    points:
{PLANT_POINTS}""" if devices else "devices: []\n")
    ver = f'    version: "{version}"\n' if version else ""
    return f"""# bench/fleet.py: gateway {gw} of a fleet
gateway: {{ id: {gw}, data_dir: "{data_dir}" }}
http: {{ listen: "127.0.0.1:{http_port}" }}
{dev}rules:
  - name: all
    match: ["#"]
    batch: {{ max_events: 100, max_age: 1s }}
    publish: {{ topic: "plant/{{gateway}}/{{device}}", qos: 1 }}
upstream:
  mqtt:
    uris: [{", ".join(f'"{u}"' for u in uris)}]
{ver}  spool: {{ fsync: {fsync} }}
"""


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "max": None, "min": None}
    return {"mean": statistics.fmean(values), "max": max(values), "min": min(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=100, help="gateways (100)")
    ap.add_argument("--duration", type=float, default=120, help="measured seconds (120)")
    ap.add_argument("--broker", choices=["rabbitmq", "mosquitto"], default="rabbitmq")
    ap.add_argument("--nodes", type=int, default=3, help="RabbitMQ nodes (3)")
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--poll", type=int, default=1000, help="poll interval, ms (1000)")
    ap.add_argument("--fsync", default="always", help="spool fsync (always, the default)")
    ap.add_argument("--mqtt-version", default="",
                    help="upstream.mqtt.version for the gateways (default: none, so Ferry "
                         "offers 5 and falls back to 3.1.1, as with RabbitMQ 3.10)")
    ap.add_argument("--kill-node", type=int, metavar="I",
                    help="SIGKILL RabbitMQ node I halfway through the window")
    ap.add_argument("--no-mirror", action="store_true",
                    help="leave the consumers' queues unmirrored (RabbitMQ's default)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--json", help="where the results go")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory")
    a = ap.parse_args()
    ferry_bin = os.path.join(a.build, "gateway/ferry")
    sim_bin = os.path.join(a.build, "tests/tools/ferry_modbus_sim")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_json = a.json or os.path.join(a.build, "fleet", f"fleet-{a.n}-{stamp}.json")
    d = tempfile.mkdtemp(prefix="ferry-fleet-")
    os.chmod(d, 0o755)  # the RabbitMQ nodes run as rabbitmq under it
    procs = Procs()
    cluster_dir = os.path.join(d, "cluster")
    cluster = None
    load_before = open("/proc/loadavg").read().split()[:3]
    log(f"run directory {d}; load average before: {' '.join(load_before)}")
    try:
        # ---- broker ------------------------------------------------------------------
        t = time.monotonic()
        if a.broker == "rabbitmq":
            # --owner: the cluster stops itself should this script die without its finally.
            r = subprocess.run(["/usr/bin/python3", CLUSTER, "start", cluster_dir, "--nodes",
                                str(a.nodes), "--owner", str(os.getpid())],
                               capture_output=True, text=True)
            if r.returncode != 0:
                log(f"cluster did not start:\n{r.stderr}")
                return 3
            cluster = json.load(open(os.path.join(cluster_dir, "cluster.json")))
            uris = [f"tcp://127.0.0.1:{n['mqtt_port']}" for n in cluster["nodes"]]
            broker_pids = {f"rabbit-{i}": n["pid"] for i, n in enumerate(cluster["nodes"])}
            if not a.no_mirror:
                # RabbitMQ 3.10 keeps a QoS 1 subscription with a kept session (the
                # consumer's) in a durable classic queue on the node the client first used;
                # with that node dead, subscribing again fails and the broker closes the
                # connection. Mirroring the consumers' queues keeps a copy on every node
                # (docs/SCALE.md). Ferry's own command subscription is QoS 0 and needs none.
                r = subprocess.run(["/usr/bin/python3", CLUSTER, "ctl", cluster_dir, "0",
                                    "set_policy", "--apply-to", "queues", "fleet-consumers",
                                    "^mqtt-subscription-fleet-consumer-", '{"ha-mode":"all"}'],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    log(f"set_policy failed: {r.stdout}{r.stderr}")
                    return 3
        else:
            port = free_port()
            os.makedirs(os.path.join(d, "mosquitto"))
            conf = os.path.join(d, "mosquitto", "m.conf")
            with open(conf, "w") as f:
                f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 100000\n")
            m = procs.start(["mosquitto", "-c", conf], os.path.join(d, "mosquitto", "log"))
            uris = [f"tcp://127.0.0.1:{port}"]
            broker_pids = {"mosquitto": m.pid}
            if not wait_until(lambda: accepts(port), 10):
                log("mosquitto did not start")
                return 3
        broker_start_s = time.monotonic() - t
        log(f"broker up in {broker_start_s:.1f} s: {uris}")

        # ---- plant -------------------------------------------------------------------
        sim_port = free_port()
        sim_args = [sim_bin, "--port", str(sim_port), "--wave"]
        for s in SIM_SETS:
            sim_args += ["--set", s]
        sim = procs.start(sim_args, os.path.join(d, "sim.log"))

        if not wait_until(lambda: accepts(sim_port), 10):
            log("simulator did not start")
            return 3

        # ---- consumers ---------------------------------------------------------------
        gws = [f"fleet-{i:03d}" for i in range(a.n)]
        db = os.path.join(d, "fleet.db")
        consumers = []
        for k in range(a.consumers):
            args = ["/usr/bin/python3", CONSUMER, "run", "--db", db, "--client-id",
                    f"fleet-consumer-{k}", "--persistent", "--json"]
            # Every node, starting from a different one per consumer.
            for j in range(len(uris)):
                args += ["--broker", uris[(k + j) % len(uris)]]
            if a.broker == "rabbitmq":
                args += ["--mqtt", "3.1.1"]
                if a.consumers > 1:  # no shared subscriptions: each takes its part
                    for gw in gws[k::a.consumers]:
                        args += ["--topic", f"plant/{gw}/#"]
            elif a.consumers > 1:
                args += ["--share", "fleet"]
            log_path = os.path.join(d, f"consumer-{k}.log")
            consumers.append((procs.start(args, log_path), log_path))
        for p, log_path in consumers:
            if not wait_until(lambda: "subscribed to" in open(log_path).read(), 30):
                log(f"consumer did not subscribe: {open(log_path).read()}")
                return 3

        # ---- gateways ----------------------------------------------------------------
        fleet = []
        t = time.monotonic()
        http_ports = free_ports(a.n)
        for i, gw in enumerate(gws):
            gdir = os.path.join(d, "gw", gw)
            os.makedirs(gdir)
            http_port = http_ports[i]
            mine = [uris[(i + j) % len(uris)] for j in range(len(uris))]
            cfg = os.path.join(gdir, "ferry.yaml")
            with open(cfg, "w") as f:
                f.write(ferry_yaml(gw, gdir, http_port, sim_port, mine, a.mqtt_version, a.poll,
                                   a.fsync))
            p = procs.start([ferry_bin, "run", "-c", cfg], os.path.join(gdir, "ferry.log"))
            fleet.append({"gateway": gw, "proc": p, "pid": p.pid, "http": http_port,
                          "dir": gdir, "cfg": cfg, "uris": mine})
            time.sleep(0.02)  # a little apart: 100 start-ups at once are only a spike
        def up(g):  # its own process answers, not another one on the same port
            return g["proc"].poll() is None and ready(g["http"])
        if not wait_until(lambda: all(up(g) for g in fleet), 120, 1):
            bad = [g["gateway"] for g in fleet if not up(g)]
            log(f"not ready after 120 s: {bad[:10]} ({len(bad)})")
            return 3
        ready_s = time.monotonic() - t
        log(f"{a.n} gateways ready in {ready_s:.1f} s")

        def gateways_seen():
            with sqlite3.connect(db, timeout=30) as c:
                return c.execute("SELECT count(DISTINCT gateway) FROM messages").fetchone()[0]
        if not wait_until(lambda: gateways_seen() == a.n, 180, 1):
            log(f"only {gateways_seen()} of {a.n} gateways delivered within 180 s")
            return 3
        all_delivering_s = time.monotonic() - t
        log(f"every gateway delivering {all_delivering_s:.1f} s after the first start; "
            f"warming up 10 s")
        time.sleep(10)

        # ---- the measured window -----------------------------------------------------
        others = {"simulator": [sim.pid]}
        others.update({f"consumer-{k}": [p.pid] for k, (p, _) in enumerate(consumers)})
        others.update({name: [pid] for name, pid in broker_pids.items()})
        if cluster and cluster.get("epmd_pid"):
            others["epmd"] = [cluster["epmd_pid"]]
        every_pid = [g["pid"] for g in fleet] + [p for v in others.values() for p in v]
        cpu0 = {pid: cpu_s(pid) for pid in every_pid}
        m0 = machine_jiffies()
        t0, t0_ms = time.monotonic(), int(time.time() * 1000)
        rss = {pid: [] for pid in every_pid}
        log(f"measuring {a.duration:.0f} s")
        # --kill-node I: node I's beam.smp gets SIGKILL halfway through (a hard node failure);
        # the gateways that were on it reconnect to their next uri.
        kill = {"node": a.kill_node, "after_s": None, "recovered_s": None, "affected": 0}
        affected = []
        if a.kill_node is not None:
            affected = [g for g in fleet if g["uris"][0] == uris[a.kill_node]]
            kill["affected"] = len(affected)

        def reconnected(g):
            m = metrics(g["http"]) or {}
            return (m.get("ferry_mqtt_connected") == 1 and
                    m.get('ferry_mqtt_connects_total{result="ok"}', 0) >= 2)
        next_sample, killed = 0.0, None
        while (elapsed := time.monotonic() - t0) < a.duration:
            if elapsed >= next_sample:
                for pid in every_pid:
                    rss[pid].append(status_kib(pid, "VmRSS"))
                next_sample += 5
            if a.kill_node is not None and killed is None and elapsed >= a.duration / 2:
                subprocess.run(["/usr/bin/python3", CLUSTER, "kill", cluster_dir,
                                str(a.kill_node)], capture_output=True)
                killed = time.monotonic()
                kill["after_s"] = killed - t0
                log(f"killed rabbit-{a.kill_node} ({len(affected)} gateways on it)")
            if killed and kill["recovered_s"] is None and all(map(reconnected, affected)):
                kill["recovered_s"] = time.monotonic() - killed
                log(f"every gateway of rabbit-{a.kill_node} connected again after "
                    f"{kill['recovered_s']:.1f} s")
            time.sleep(0.25 if a.kill_node is not None else
                       min(1.0, max(0.05, a.duration - elapsed)))
        wall = time.monotonic() - t0
        t1_ms = int(time.time() * 1000)
        m1 = machine_jiffies()
        cpu1 = {pid: cpu_s(pid) for pid in every_pid}
        hwm = {pid: status_kib(pid, "VmHWM") for pid in every_pid}
        load_after = open("/proc/loadavg").read().split()[:3]

        def pct(pid):
            if cpu0[pid] is None or cpu1[pid] is None:
                return None
            return 100.0 * (cpu1[pid] - cpu0[pid]) / wall

        def mib(kib):
            return None if kib is None else kib / 1024.0
        for g in fleet:
            pid = g["pid"]
            g["cpu_pct"] = pct(pid)
            g["rss_mean_mib"] = mib(summary(rss[pid])["mean"])
            g["rss_max_mib"] = mib(summary(rss[pid])["max"])
            g["hwm_mib"] = mib(hwm[pid])
        other_rows = {}
        for name, pids in others.items():
            gone = any(pct(p) is None for p in pids)  # a killed node: no end to measure
            other_rows[name] = {
                "cpu_pct": None if gone else sum(pct(p) for p in pids),
                "rss_max_mib": mib(sum(summary(rss[p])["max"] or 0 for p in pids)),
                "hwm_mib": None if gone else mib(sum(hwm[p] or 0 for p in pids))}
        busy = (m1[0] - m0[0]) / (m1[1] - m0[1]) * 100.0 * os.cpu_count()  # % of one core
        ours = sum(g["cpu_pct"] or 0 for g in fleet) + sum(r["cpu_pct"] or 0
                                                          for r in other_rows.values())
        with sqlite3.connect(db, timeout=30) as c:
            n_msgs, n_readings, n_new = c.execute(
                "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(new_readings), 0) "
                "FROM messages WHERE received_ms >= ? AND received_ms < ?",
                (t0_ms, t1_ms)).fetchone()
        window_s = (t1_ms - t0_ms) / 1000.0
        ingest = {"messages_per_s": n_msgs / window_s, "readings_per_s": n_readings / window_s,
                  "new_readings_per_s": n_new / window_s,
                  "offered_readings_per_s": a.n * POINTS_PER_GATEWAY * 1000.0 / a.poll}
        log(f"window done: {ingest['messages_per_s']:.1f} messages/s, "
            f"{ingest['readings_per_s']:.0f} readings/s; machine busy {busy:.0f} % of one core")

        # Where the clients are: each node has its own MQTT port, and a connection's name
        # ends in the port it reached ("127.0.0.1:PEER -> 127.0.0.1:PORT"); the plugin's
        # list is cluster-wide.
        per_node = {}
        if a.broker == "rabbitmq":
            live = next(i for i in range(len(uris)) if i != a.kill_node)
            r = subprocess.run(["/usr/bin/python3", CLUSTER, "ctl", cluster_dir, str(live),
                                "list_mqtt_connections", "conn_name"], capture_output=True,
                               text=True)
            ports = {n["mqtt_port"]: f"rabbit-{i}" for i, n in enumerate(cluster["nodes"])}
            for line in r.stdout.splitlines():
                port = line.rsplit(":", 1)[-1].strip()
                if port.isdigit() and int(port) in ports:
                    per_node[ports[int(port)]] = per_node.get(ports[int(port)], 0) + 1
        log(f"connections per node: {per_node}")

        # ---- the draining stop -------------------------------------------------------
        # The same config without devices: the reload keeps the MQTT session and the spool
        # (an unchanged upstream), /metrics stays up, and nothing new is produced.
        for g in fleet:
            with open(g["cfg"], "w") as f:
                f.write(ferry_yaml(g["gateway"], g["dir"], g["http"], sim_port, g["uris"],
                                   a.mqtt_version, a.poll, a.fsync, devices=False))
            g["proc"].send_signal(signal.SIGHUP)
        time.sleep(2.5)  # the rule's open batches close after max_age (1 s)

        def drained(g):
            m = metrics(g["http"])
            if m is None:
                return False
            g["metrics"] = m
            return m.get("ferry_spool_messages", 1) == 0
        t = time.monotonic()
        pending = list(fleet)
        while pending and time.monotonic() - t < 120:
            pending = [g for g in pending if not drained(g)]
            if pending:
                time.sleep(1)
        drain_s = time.monotonic() - t
        log(f"drained in {drain_s:.1f} s; {len(pending)} not drained")
        # The last scrape, after the spools are empty: what each gateway had acknowledged.
        for g in fleet:
            g["metrics"] = metrics(g["http"]) or g.get("metrics", {})
            g["delivered"] = int(g["metrics"].get("ferry_events_delivered_total", -1))
            g["produced"] = int(g["metrics"].get("ferry_events_produced_total", -1))
            g["dropped"] = int(sum(v for k, v in g["metrics"].items()
                                   if k.startswith("ferry_events_dropped_total")))
            g["connects"] = int(g["metrics"].get('ferry_mqtt_connects_total{result="ok"}', 0))
            g["reloaded"] = int(g["metrics"].get(
                'ferry_config_reloads_total{result="applied"}', 0))
        total_delivered = sum(g["delivered"] for g in fleet)

        def statuses():
            with sqlite3.connect(db, timeout=30) as c:
                return dict(c.execute("SELECT gateway, status FROM gateway_status").fetchall())

        def stored():
            with sqlite3.connect(db, timeout=30) as c:
                return dict(c.execute(
                    "SELECT gateway, count(*) FROM readings GROUP BY gateway").fetchall())
        # The consumers catch up: stop waiting when the store holds what was delivered or
        # has not grown for 10 s.
        last, still, t = -1, 0, time.monotonic()
        while time.monotonic() - t < 120:
            now = sum(stored().values())
            if now >= total_delivered:
                break
            still = still + 1 if now == last else 0
            if still >= 10:
                break
            last = now
            time.sleep(1)
        per_gw = stored()
        status_at_end = statuses()
        codes = procs.stop([g["proc"] for g in fleet], grace=20)
        # A clean stop ends with a retained "offline" on ferry/{gateway}/status: let the
        # consumers take those in before they stop.
        wait_until(lambda: list(statuses().values()).count("offline") == a.n, 15, 0.5)
        status_after_stop = statuses()
        codes += procs.stop([p for p, _ in consumers], grace=20)
        rep = subprocess.run(["/usr/bin/python3", CONSUMER, "report", "--db", db, "--json"],
                             capture_output=True, text=True)
        report = json.loads(rep.stdout)["gateways"]
        for g, code in zip(fleet, codes):
            r = report.get(g["gateway"], {})
            g["exit"] = code
            # The protocol version each gateway agreed with the broker (its last connect).
            agreed = [line.split(" version=")[1].split()[0]
                      for line in open(os.path.join(g["dir"], "ferry.log"), errors="replace")
                      if "msg=connected" in line and " version=" in line]
            g["agreed_version"] = agreed[-1] if agreed else None
            g["stored"] = per_gw.get(g["gateway"], 0)
            g["missing_batches"] = r.get("missing_batches")
            g["duplicates_dropped"] = r.get("duplicates_dropped")
            g["repeated_messages"] = r.get("repeated_messages")
            g["out_of_order"] = r.get("out_of_order")

        # ---- results -----------------------------------------------------------------
        cpu = summary([g["cpu_pct"] for g in fleet])
        res = {
            "when": stamp, "n": a.n, "duration_s": wall, "broker": a.broker,
            "broker_nodes": len(uris), "consumers": a.consumers, "poll_ms": a.poll,
            "mirrored_subscription_queues": a.broker == "rabbitmq" and not a.no_mirror,
            "points_per_gateway": POINTS_PER_GATEWAY, "fsync": a.fsync,
            "mqtt_version": a.mqtt_version or "not set",
            "agreed_versions": {v: sum(g["agreed_version"] == v for g in fleet)
                                for v in sorted({str(g["agreed_version"]) for g in fleet})},
            "machine": {"cores": os.cpu_count(), "load_before": load_before,
                        "load_after": load_after, "busy_pct_of_one_core": busy,
                        "ours_pct_of_one_core": ours, "others_pct_of_one_core": busy - ours},
            "startup": {"broker_s": broker_start_s, "all_ready_s": ready_s,
                        "all_delivering_s": all_delivering_s},
            "gateway_cpu_pct": cpu,
            "gateway_rss_mib": summary([g["rss_mean_mib"] for g in fleet]),
            "gateway_rss_max_mib": summary([g["rss_max_mib"] for g in fleet]),
            "gateway_hwm_mib": summary([g["hwm_mib"] for g in fleet]),
            "others": other_rows, "ingest": ingest, "connections_per_node": per_node,
            "kill": kill, "reconnects": sum(max(0, g["connects"] - 1) for g in fleet),
            "completeness": {
                "delivered": total_delivered, "stored": sum(g["stored"] for g in fleet),
                "gateways_complete": sum(g["stored"] == g["delivered"] for g in fleet),
                "gateways_short": [g["gateway"] for g in fleet if g["stored"] < g["delivered"]],
                "missing_batches": sum(g["missing_batches"] or 0 for g in fleet),
                "duplicates_dropped": sum(g["duplicates_dropped"] or 0 for g in fleet),
                "repeated_messages": sum(g["repeated_messages"] or 0 for g in fleet),
                "out_of_order": sum(g["out_of_order"] or 0 for g in fleet),
                "drain_s": drain_s, "not_drained": [g["gateway"] for g in pending],
                "reloads_applied": sum(g["reloaded"] for g in fleet),
                "status_online_before_stop": list(status_at_end.values()).count("online"),
                "status_offline_after_stop": list(status_after_stop.values()).count("offline"),
                "clean_exits": sum(c == 0 for c in codes[:len(fleet)])},
            "gateways": [{k: v for k, v in g.items() if k not in ("proc", "metrics", "cfg")}
                         for g in fleet],
        }
        os.makedirs(os.path.dirname(out_json), exist_ok=True)
        with open(out_json, "w") as f:
            json.dump(res, f, indent=1)
        print_table(res)
        print(f"JSON: {out_json}")
        return 0
    finally:
        procs.stop_all()
        if cluster is not None or os.path.exists(os.path.join(cluster_dir, "cluster.json")):
            subprocess.run(["/usr/bin/python3", CLUSTER, "stop", cluster_dir],
                           capture_output=True)
        if a.keep:
            log(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


def print_table(r):
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)
    m, c = r["machine"], r["completeness"]
    print(f"fleet: {r['n']} gateways x {r['points_per_gateway']} points every "
          f"{r['poll_ms']} ms into {r['broker']} ({r['broker_nodes']} node(s)), "
          f"{r['consumers']} consumer(s), upstream.mqtt.version {r['mqtt_version']} (agreed: "
          f"{', '.join(f'{v} by {n}' for v, n in r['agreed_versions'].items())}), "
          f"fsync {r['fsync']}, "
          f"{r['duration_s']:.0f} s measured")
    print(f"  machine        {m['cores']} cores; load average {' '.join(m['load_before'])} "
          f"before, {' '.join(m['load_after'])} after; busy {m['busy_pct_of_one_core']:.0f} % "
          f"of one core: this run {m['ours_pct_of_one_core']:.0f} %, others "
          f"{m['others_pct_of_one_core']:.0f} %")
    s = r["startup"]
    print(f"  start-up       broker {s['broker_s']:.1f} s; all gateways ready "
          f"{s['all_ready_s']:.1f} s, all delivering {s['all_delivering_s']:.1f} s")
    print(f"  {'per gateway':<14} {'mean':>8} {'min':>8} {'max':>8}")
    for label, key in (("CPU % of core", "gateway_cpu_pct"), ("VmRSS MiB", "gateway_rss_mib"),
                       ("VmRSS max MiB", "gateway_rss_max_mib"),
                       ("VmHWM MiB", "gateway_hwm_mib")):
        v = r[key]
        print(f"  {label:<14} {f(v['mean'], '.2f'):>8} {f(v['min'], '.2f'):>8} "
              f"{f(v['max'], '.2f'):>8}")
    print(f"  {'process':<14} {'CPU %':>8} {'RSS max':>8} {'VmHWM':>8}   (MiB)")
    for name, o in r["others"].items():
        print(f"  {name[:14]:<14} {f(o['cpu_pct']):>8} {f(o['rss_max_mib']):>8} "
              f"{f(o['hwm_mib']):>8}")
    if r["connections_per_node"]:
        print("  connections    " + ", ".join(f"{k}: {v}" for k, v in
                                             sorted(r["connections_per_node"].items())))
    k = r["kill"]
    if k["node"] is not None:
        print(f"  node kill      rabbit-{k['node']} SIGKILLed {f(k['after_s'])} s into the "
              f"window, {k['affected']} gateways on it; all connected again after "
              f"{f(k['recovered_s'])} s; {r['reconnects']} reconnects in all")
    i = r["ingest"]
    print(f"  ingest         {i['messages_per_s']:.1f} messages/s, {i['readings_per_s']:.0f} "
          f"readings/s stored by the consumer(s) (offered {i['offered_readings_per_s']:.0f} "
          f"readings/s)")
    print(f"  completeness   {c['stored']} of {c['delivered']} delivered readings stored; "
          f"{c['gateways_complete']} of {r['n']} gateways complete; missing batches "
          f"{c['missing_batches']}; repeats {c['repeated_messages']}; duplicates dropped "
          f"{c['duplicates_dropped']}; reordered {c['out_of_order']}; drained in "
          f"{c['drain_s']:.1f} s; {c['clean_exits']} clean exits, {c['reloads_applied']} "
          f"reloads applied")
    print(f"  status topic   {c['status_online_before_stop']} gateways \"online\" before the "
          f"stop, {c['status_offline_after_stop']} \"offline\" after it (ferry/+/status as the "
          f"consumer saw it)")


if __name__ == "__main__":
    sys.exit(main())
