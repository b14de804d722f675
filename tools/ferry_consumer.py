#!/usr/bin/python3
"""Ferry's reference consumer: what a cloud team needs to take Ferry's stream in safely.

    ferry_consumer.py run --broker tcp://HOST:PORT [--topic 'plant/#'] [--share GROUP]
                          [--client-id ID --persistent] [--mqtt 5|3.1.1]
                          (--db FILE | --jsonl FILE) [--duration S] [--json]
    ferry_consumer.py report --db FILE [--json]

It stores every reading once, keyed by (gateway, seq), and says what it could not have: a
hole in a topic's `batch` numbers is a message Ferry dropped by policy (CONTRACT.md,
"Upstream messages"). Python 3 with Debian's python3-paho-mqtt 1.6 and the sqlite3 module;
tools/README.md explains each choice.
"""
import argparse
import json
import os
import signal
import socket
import sqlite3
import sys
import time
import urllib.parse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def log(msg):
    print(f"ferry_consumer: {msg}", file=sys.stderr, flush=True)


# ---- what the stream promises, checked -----------------------------------------------------


class Tracker:
    """Counts per gateway what arrived, and finds lost and reordered messages.

    Fed one call per arriving message, by the live consumer and again by `report` from the
    database's messages table, so both print the same numbers. Order is judged per consumer
    instance: members of a shared subscription each get part of a topic in order, but
    their writes to one database interleave arbitrarily. It is judged per stream too: after
    an outage Ferry sends live batches first and replays the backlog (`"replay": true`)
    beside them, each stream in batch order (docs/DELIVERY.md, "Live first").
    """

    def __init__(self):
        self.gateways = {}
        self.seen = set()  # (gateway, topic, batch) that arrived at least once
        self.newest = {}  # (consumer, gateway, topic, replay) -> highest batch seen first

    def gateway(self, gw):
        return self.gateways.setdefault(gw, {
            "readings": 0, "duplicates_dropped": 0, "messages": 0, "repeated_messages": 0,
            "replayed_messages": 0, "out_of_order": 0, "first_seq": None, "last_seq": None,
            "topics": {}})

    def message(self, consumer, gw, topic, batch, replay, readings, new, lo_seq, hi_seq):
        g = self.gateway(gw)
        g["messages"] += 1
        g["readings"] += new
        g["duplicates_dropped"] += readings - new
        if (gw, topic, batch) in self.seen:
            # At-least-once: a message whose PUBACK was lost comes again. Not a reorder.
            g["repeated_messages"] += 1
            return
        self.seen.add((gw, topic, batch))
        g["topics"].setdefault(topic, set()).add(batch)
        if replay:
            g["replayed_messages"] += 1
        key = (consumer, gw, topic, bool(replay))
        if batch < self.newest.get(key, 0):
            g["out_of_order"] += 1
        self.newest[key] = max(batch, self.newest.get(key, 0))
        if new:
            g["first_seq"] = lo_seq if g["first_seq"] is None else min(g["first_seq"], lo_seq)
            g["last_seq"] = hi_seq if g["last_seq"] is None else max(g["last_seq"], hi_seq)

    def report(self):
        """Per gateway: counts, and per topic the batch range and its holes."""
        out = {}
        for gw, g in sorted(self.gateways.items()):
            r = {k: v for k, v in g.items() if k != "topics"}
            r["batches"] = r["missing_batches"] = 0
            r["topics"] = {}
            for topic, batches in sorted(g["topics"].items()):
                b = sorted(batches)
                # Only holes between the first and last batch seen count: a consumer that
                # started after the gateway never saw batch 1, which is not a loss.
                gaps = [[p + 1, n - 1] for p, n in zip(b, b[1:]) if n != p + 1]
                r["topics"][topic] = {"first_batch": b[0], "last_batch": b[-1],
                                      "batches": len(b), "gaps": gaps}
                r["batches"] += len(b)
                r["missing_batches"] += sum(hi - lo + 1 for lo, hi in gaps)
            out[gw] = r
        return out


def print_report(gateways, status, as_json, out=sys.stdout):
    keys = ["readings", "duplicates_dropped", "messages", "repeated_messages",
            "replayed_messages", "batches", "missing_batches", "out_of_order"]
    totals = {k: sum(g[k] for g in gateways.values()) for k in keys}
    totals["gateways"] = len(gateways)
    if as_json:
        json.dump({"gateways": gateways, "totals": totals, "status": status}, out, indent=1)
        out.write("\n")
        return
    heads = ["gateway", "readings", "dups", "messages", "repeats", "replayed", "batches",
             "missing", "reordered", "status"]
    rows = [[gw] + [str(g[k]) for k in keys] + [status.get(gw, "-")]
            for gw, g in gateways.items()]
    rows.append(["total"] + [str(totals[k]) for k in keys] + [""])
    widths = [max(len(r[i]) for r in rows + [heads]) for i in range(len(heads))]
    for r in [heads] + rows:
        out.write("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip() + "\n")
    for gw, g in gateways.items():
        for topic, t in g["topics"].items():
            for lo, hi in t["gaps"]:
                out.write(f"gap: {gw} {topic}: batch {lo}..{hi} missing "
                          f"({hi - lo + 1} message{'s' if hi > lo else ''})\n")


# ---- where readings go ---------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
  gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT, tag TEXT, ts INTEGER,
  value, quality TEXT, unit TEXT, topic TEXT, batch INTEGER,
  PRIMARY KEY (gateway, seq)) WITHOUT ROWID;
-- One row per arrival, repeats included: what the report is computed from.
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT, consumer TEXT, received_ms INTEGER,
  gateway TEXT, topic TEXT, batch INTEGER, replay INTEGER,
  readings INTEGER, new_readings INTEGER, min_seq INTEGER, max_seq INTEGER);
CREATE TABLE IF NOT EXISTS gateway_status (
  gateway TEXT PRIMARY KEY, status TEXT, received_ms INTEGER);
"""


def sql_value(v):
    # SQLite columns take numbers, text and NULL as they are; anything else stays JSON.
    if v is None or isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return v
    return int(v) if isinstance(v, bool) else json.dumps(v)


class SqliteSink:
    """Readings in SQLite, each (gateway, seq) once, however many consumers write it.

    WAL lets readers (a dashboard, `report`) run beside the writers; busy_timeout makes a
    writer wait for another instance's transaction instead of failing. Each message is one
    `BEGIN IMMEDIATE` transaction (take the write lock first, so two instances never deadlock
    upgrading read locks), committed before paho sends the PUBACK: what was acknowledged is
    stored. synchronous=FULL: the commit is on disk, not only in the page cache.
    """

    def __init__(self, path, consumer):
        self.consumer = consumer
        # isolation_level=None: no implicit BEGIN; store() says where transactions are.
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def store(self, gw, topic, batch, replay, events):
        now = int(time.time() * 1000)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            new = 0
            for e in events:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (gw, e["seq"], e.get("device"), e.get("tag"), e.get("ts"),
                     sql_value(e.get("value")), e.get("quality"), e.get("unit"), topic, batch))
                new += cur.rowcount  # 0 when (gateway, seq) was stored already
            seqs = [e["seq"] for e in events] or [None]
            self.db.execute(
                "INSERT INTO messages (consumer, received_ms, gateway, topic, batch, replay,"
                " readings, new_readings, min_seq, max_seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (self.consumer, now, gw, topic, batch, int(replay), len(events), new,
                 min(seqs, default=None), max(seqs, default=None)))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return new

    def status(self, gw, status):
        self.db.execute("INSERT OR REPLACE INTO gateway_status VALUES (?,?,?)",
                        (gw, status, int(time.time() * 1000)))

    def close(self):
        self.db.close()


class JsonlSink:
    """One JSON line per new reading, for piping on. One instance per file: the set of
    (gateway, seq) already written is read back from the file at start, so a restarted
    consumer still drops what it wrote before; several instances would each keep their own."""

    def __init__(self, path):
        self.seen = set()
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        r = json.loads(line)
                        self.seen.add((r["gateway"], r["seq"]))
        self.f = open(path, "a")

    def store(self, gw, topic, batch, replay, events):
        new = [e for e in events if (gw, e["seq"]) not in self.seen]
        for e in new:
            self.f.write(json.dumps(dict(e, gateway=gw, topic=topic, batch=batch)) + "\n")
            self.seen.add((gw, e["seq"]))
        self.f.flush()
        os.fsync(self.f.fileno())  # on disk before the PUBACK, as with SQLite
        return len(new)

    def status(self, gw, status):
        pass

    def close(self):
        self.f.close()


# ---- MQTT ----------------------------------------------------------------------------------


class Consumer:
    def __init__(self, args, name, sink, tracker):
        self.args, self.name, self.sink, self.tracker = args, name, sink, tracker
        self.status = {}  # gateway -> online | offline (ferry/{gateway}/status, retained)
        self.ignored = 0
        self.subscribed = False
        v5 = args.mqtt == "5"
        # A fixed client id and a kept session make the broker queue QoS 1 messages while
        # this consumer is away, so a restart loses nothing; a random id with a clean
        # session is for looking only.
        client_id = args.client_id or name
        if v5:
            self.client = mqtt.Client(client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(client_id, clean_session=not args.persistent,
                                      protocol=mqtt.MQTTv311)
        self.tls = False
        if args.username:
            self.client.username_pw_set(args.username, args.password)
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message
        self.topics = []

    def connect(self, uri):
        u = urllib.parse.urlparse(uri)
        if u.scheme not in ("tcp", "mqtt", "ssl", "mqtts"):
            raise ValueError(f"unsupported broker uri {uri}")
        if u.scheme in ("ssl", "mqtts") and not self.tls:
            self.client.tls_set(ca_certs=self.args.ca_file)
            self.tls = True
        port = u.port or (8883 if u.scheme in ("ssl", "mqtts") else 1883)
        self.subscribed = False
        if self.args.mqtt == "5":
            props = Properties(PacketTypes.CONNECT)
            if self.args.persistent:
                # MQTT 5 ends a session at disconnect unless told to keep it.
                props.SessionExpiryInterval = self.args.session_expiry
            self.client.connect(u.hostname, port, keepalive=30,
                                clean_start=not self.args.persistent, properties=props)
        else:
            self.client.connect(u.hostname, port, keepalive=30)

    def on_connect(self, client, userdata, flags, rc, properties=None):
        if rc != 0:
            words = mqtt.connack_string(rc) if isinstance(rc, int) else str(rc)
            log(f"broker refused the connection: {words}")
            return
        # Subscribe again even with a kept session: a broker that lost it (restarted without
        # persistence, failed over to another node) would otherwise send nothing, silently.
        self.topics = [(f"$share/{self.args.share}/{t}" if self.args.share else t, 1)
                       for t in self.args.topic]
        if self.args.status_topic:
            # Never shared: every instance wants every gateway's retained status.
            self.topics.append((self.args.status_topic, 1))
        client.subscribe(self.topics)
        log(f"connected (session present: {bool(flags.get('session present'))})")

    def on_subscribe(self, client, userdata, mid, granted, properties=None):
        # One code per filter: 0-2 the QoS granted, 0x80 (128) or more a refusal.
        codes = [g if isinstance(g, int) else g.value for g in granted]
        refused = [t for (t, _), c in zip(self.topics, codes) if c >= 0x80]
        if refused:
            log(f"the broker refused the subscription to {refused}")
        self.subscribed = True
        log(f"subscribed to {[t for t, _ in self.topics]} (granted {codes})")

    def on_message(self, client, userdata, msg):
        # paho 1.6 sends the PUBACK after this returns; an exception here propagates out of
        # loop(), the connection is dropped unacknowledged and the broker sends it again.
        status_topic = self.args.status_topic
        if status_topic and mqtt.topic_matches_sub(status_topic, msg.topic):
            gw = msg.topic.split("/")[1]
            self.status[gw] = msg.payload.decode("utf-8", "replace")
            self.sink.status(gw, self.status[gw])
            return
        try:
            body = json.loads(msg.payload)
            gw, batch, events = body["gateway"], int(body["batch"]), body["events"]
            seqs = [int(e["seq"]) for e in events]
        except (ValueError, KeyError, TypeError):
            # Not Ferry's JSON (a Sparkplug B payload, someone else's topic): not ours to keep.
            self.ignored += 1
            if self.ignored == 1 or self.ignored % 1000 == 0:
                log(f"ignored {self.ignored} payload(s) that are not Ferry's JSON, "
                    f"latest on {msg.topic}")
            return
        replay = body.get("replay") is True
        new = self.sink.store(gw, msg.topic, batch, replay, events)
        self.tracker.message(self.name, gw, msg.topic, batch, replay, len(events), new,
                             min(seqs, default=0), max(seqs, default=0))

    def run(self, stop):
        brokers, i, backoff = self.args.broker, 0, 1.0
        deadline = time.monotonic() + self.args.duration if self.args.duration else None

        def done():
            return stop() or bool(deadline and time.monotonic() >= deadline)

        def pause(seconds):  # a backoff that a SIGTERM cuts short
            end = time.monotonic() + seconds
            while not done() and time.monotonic() < end:
                time.sleep(0.2)
        while not done():
            uri = brokers[i % len(brokers)]
            i += 1  # more than one broker (cluster nodes): the next one on each failure
            log(f"connecting to {uri} as {self.name} (MQTT {self.args.mqtt})")
            try:
                self.connect(uri)
            except (OSError, ValueError) as e:
                log(f"cannot connect to {uri}: {e}; again in {backoff:.0f} s")
                pause(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            while not done():
                try:
                    rc = self.client.loop(timeout=0.2)
                except sqlite3.Error as e:
                    # Not stored, so not acknowledged: drop the connection and come back.
                    log(f"database error, message left unacknowledged: {e}")
                    rc = mqtt.MQTT_ERR_UNKNOWN
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    log(f"connection to {uri} lost: {mqtt.error_string(rc)}")
                    self.client.disconnect()
                    break
                if self.subscribed:
                    backoff = 1.0
            else:
                self.client.disconnect()  # clean: the broker keeps a persistent session
                self.client.loop(timeout=0.2)
                return
            pause(backoff)
            backoff = min(backoff * 2, 30.0)


# ---- commands ------------------------------------------------------------------------------


def report_from_db(path):
    """The report of everything every instance stored, read back from the database."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    tracker = Tracker()
    for row in db.execute("SELECT consumer, gateway, topic, batch, replay, readings,"
                          " new_readings, min_seq, max_seq FROM messages ORDER BY id"):
        tracker.message(*row)
    gateways = tracker.report()
    # The readings table is the truth for what is stored; the messages table's counts must
    # agree with it (they are written in one transaction).
    for gw, n, lo, hi in db.execute(
            "SELECT gateway, count(*), min(seq), max(seq) FROM readings GROUP BY gateway"):
        g = gateways[gw]
        if g["readings"] != n:
            log(f"{gw}: {n} readings stored but {g['readings']} counted in messages")
        g["readings"], g["first_seq"], g["last_seq"] = n, lo, hi
    status = dict(db.execute("SELECT gateway, status FROM gateway_status").fetchall())
    db.close()
    return gateways, status


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="consume, store, report at exit")
    r.add_argument("--broker", action="append", required=True,
                   help="tcp://HOST:PORT (repeat for cluster nodes: tried in turn)")
    r.add_argument("--topic", action="append",
                   help="topic filter of Ferry's rules (default plant/#; repeatable)")
    r.add_argument("--share", metavar="GROUP",
                   help="shared subscription $share/GROUP/...: instances split the stream")
    r.add_argument("--status-topic", default="ferry/+/status",
                   help="gateway status (retained); '' to skip")
    r.add_argument("--mqtt", choices=["5", "3.1.1"], default="5")
    r.add_argument("--client-id", help="fixed client id (needed for --persistent)")
    r.add_argument("--persistent", action="store_true",
                   help="keep the session: the broker queues messages while we are away")
    r.add_argument("--session-expiry", type=int, default=86400,
                   help="MQTT 5: seconds the broker keeps a persistent session (86400)")
    r.add_argument("--username")
    r.add_argument("--password", default=os.environ.get("FERRY_CONSUMER_PASSWORD"))
    r.add_argument("--ca-file", help="CA for ssl:// brokers (default: the system's)")
    r.add_argument("--name", help="this instance's name in the database (client id)")
    out = r.add_mutually_exclusive_group(required=True)
    out.add_argument("--db", help="SQLite file (several instances may share it)")
    out.add_argument("--jsonl", help="JSON-lines file, one reading per line (one instance)")
    r.add_argument("--duration", type=float, help="stop after S seconds")
    r.add_argument("--json", action="store_true", help="report as JSON")
    rep = sub.add_parser("report", help="the report of everything in a database")
    rep.add_argument("--db", required=True)
    rep.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    if args.cmd == "report":
        gateways, status = report_from_db(args.db)
        print_report(gateways, status, args.json)
        return 0

    args.topic = args.topic or ["plant/#"]
    if args.persistent and not args.client_id:
        p.error("--persistent needs --client-id: a session belongs to a client id")
    stopping = []
    # SIGTERM/SIGINT end the loop between packets; the message in hand is finished first.
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stopping.append(1))
    name = args.name or args.client_id or f"ferry-consumer-{socket.gethostname()}-{os.getpid()}"
    sink = SqliteSink(args.db, name) if args.db else JsonlSink(args.jsonl)
    tracker = Tracker()
    consumer = Consumer(args, name, sink, tracker)
    consumer.run(lambda: bool(stopping))
    sink.close()
    if args.share:
        log("the report below is this instance's share; `report --db` gives the whole")
    print_report(tracker.report(), consumer.status, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
