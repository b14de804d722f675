#!/usr/bin/python3
"""An MQTT-aware TCP proxy for fault injection (tests and the fault campaign).

    /usr/bin/python3 tests/tools/mqtt_proxy.py --listen PORT --upstream PORT --control PORT

Listens on 127.0.0.1:PORT, connects each client to the broker on 127.0.0.1:UPSTREAM and
forwards whole MQTT packets both ways. It cuts the byte stream at packet boundaries (fixed
header byte + variable-length "remaining length"), so a fault applies to whole packets: it
can withhold PUBACKs without breaking the stream, and it counts packets by type.

Control: a line protocol on 127.0.0.1:CONTROL, any number of commands per connection, each
answered with one line, `ok` or `error ...`:

    pass              forward everything (the default)
    blackhole         keep connections open, forward nothing either way, answer nothing
                      (packets read meanwhile are dropped, not queued)
    withhold_puback   drop PUBACK and PUBREC from broker to client, forward everything else
                      (PINGRESP too: the client sees a live connection that never acks)
    delay MS          delay every packet in both directions by MS ms (order kept)
    slow_ack MS       delay only PUBACKs from broker to client by MS ms (order among them kept)
    cut               close all current connections now; the mode stays as it is
    refuse            close new connections at once (open ones stay)
    refuse_publish N  the next N QoS 1 publishes from MQTT 5 clients are not forwarded; the
                      proxy answers each itself with PUBACK reason 0x97 (quota exceeded), as a
                      broker refusing it would. Independent of the mode (a counter)
    mqtt5 ANSWER      how a CONNECT of MQTT 5 is met, as by a broker that speaks 3.1.1 only
                      (3.1.1 CONNECTs pass): `pass` (the default) forwards it; `close`
                      closes the connection without answering (RabbitMQ before 3.13);
                      `refuse` answers CONNACK reason 0x84 (unsupported protocol version)
                      and closes. Independent of the mode
    subscribe ANSWER  how a SUBSCRIBE is met: `pass` (the default) forwards it; `close` closes
                      the connection without answering, as RabbitMQ 3.x does when a
                      subscription's queue is homed on a dead node. Independent of the mode
    (--publish-log FILE: every PUBLISH read from a client, even one a black hole then drops,
    appends "topic batch connection monotonic-seconds" to FILE, batch being the payload's
    "batch" number or - : what the
    client put on the wire, resends included, for measuring how far back it resent)
    stats             one JSON line: connections (accepted), open, mode, packets by type each
                      way (to_broker, to_client), pubacks_withheld, pubacks_refused (reason
                      >= 0x80 from the broker), publishes_refused (by refuse_publish), inflight (QoS>0 publishes from clients whose PUBACK/PUBREC has
                      not reached the client, open connections only), inflight_max (the
                      largest inflight seen), cuts

Modes are exclusive: setting one replaces the previous (`pass` ends a delay). Each command
is logged to stderr. SIGTERM or SIGINT: close everything, exit 0. Only 127.0.0.1 is used.
"""

import argparse
import asyncio
import json
import re
import signal
import sys
import time

TYPES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
         7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
         12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}
HOST = "127.0.0.1"


def log(*parts):
    print(time.strftime("%H:%M:%S"), "mqtt_proxy", *parts, file=sys.stderr, flush=True)


def split_packets(buf):
    """Cuts complete MQTT packets off the front of `buf`; returns (packets, rest)."""
    packets = []
    pos = 0
    while True:
        if len(buf) - pos < 2:
            break
        length = 0
        mult = 1
        i = pos + 1
        complete = False
        while i < len(buf) and i < pos + 5:
            b = buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                complete = True
                break
        if not complete:
            if i >= pos + 5:
                raise ValueError("malformed remaining length")
            break
        end = i + length
        if end > len(buf):
            break
        packets.append(bytes(buf[pos:end]))
        pos = end
    return packets, buf[pos:]


def body_start(packet):
    """Offset of the variable header (after the fixed header)."""
    i = 1
    while packet[i] & 0x80:
        i += 1
    return i + 1


def publish_id(packet):
    """Packet id of a QoS 1/2 PUBLISH, None for QoS 0."""
    qos = (packet[0] >> 1) & 3
    if qos == 0:
        return None
    s = body_start(packet)
    topic_len = int.from_bytes(packet[s:s + 2], "big")
    p = s + 2 + topic_len
    return int.from_bytes(packet[p:p + 2], "big")


def protocol_level(connect):
    """The protocol level of a CONNECT packet (4: 3.1.1, 5: MQTT 5)."""
    s = body_start(connect)
    name_len = int.from_bytes(connect[s:s + 2], "big")
    return connect[s + 2 + name_len]


def ack_id_and_reason(packet):
    """(packet id, reason code) of a PUBACK/PUBREC; the reason is 0 when absent (3.1.1)."""
    s = body_start(packet)
    pid = int.from_bytes(packet[s:s + 2], "big")
    reason = packet[s + 2] if len(packet) > s + 2 else 0
    return pid, reason


BATCH = re.compile(rb'"batch":([0-9]+)')


def publish_topic_and_batch(packet):
    """(topic, batch number or None) of a PUBLISH carrying the contract's JSON payload."""
    s = body_start(packet)
    topic_len = int.from_bytes(packet[s:s + 2], "big")
    topic = packet[s + 2:s + 2 + topic_len].decode("utf-8", "replace")
    m = BATCH.search(packet, s + 2 + topic_len)
    return topic, (int(m.group(1)) if m else None)


class Proxy:
    def __init__(self, upstream, publish_log=None):
        self.upstream = upstream
        self.publish_log = open(publish_log, "a", buffering=1) if publish_log else None
        self.mode = "pass"
        self.delay_s = 0.0
        self.ack_delay_s = 0.0
        self.conns = set()
        self.accepted = 0
        self.cuts = 0
        self.refuse_left = 0
        self.refused_publishes = 0
        self.to_broker = {}
        self.to_client = {}
        self.withheld = 0
        self.refused_acks = 0
        self.inflight_max = 0
        self.mqtt5 = "pass"
        self.mqtt5_refused = 0
        self.subscribe = "pass"
        self.subscribes_closed = 0

    def inflight(self):
        return sum(len(c.outstanding) for c in self.conns)

    def stats(self):
        return {"connections": self.accepted, "open": len(self.conns), "mode": self.mode,
                "to_broker": self.to_broker, "to_client": self.to_client,
                "pubacks_withheld": self.withheld, "pubacks_refused": self.refused_acks,
                "inflight": self.inflight(), "inflight_max": self.inflight_max,
                "cuts": self.cuts, "publishes_refused": self.refused_publishes,
                "refuse_left": self.refuse_left, "mqtt5_refused": self.mqtt5_refused,
                "subscribes_closed": self.subscribes_closed}

    async def on_client(self, creader, cwriter):
        self.accepted += 1
        n = self.accepted
        if self.mode == "refuse":
            log("refused connection", n)
            cwriter.close()
            return
        try:
            breader, bwriter = await asyncio.open_connection(HOST, self.upstream)
        except OSError as e:
            log("upstream connect failed for connection", n, e)
            cwriter.close()
            return
        conn = Connection(self, n, creader, cwriter, breader, bwriter)
        self.conns.add(conn)
        log("connection", n, "open")
        try:
            await conn.run()
        finally:
            self.conns.discard(conn)
            log("connection", n, "closed")

    def command(self, line):
        words = line.split()
        if not words:
            return "error empty command"
        cmd, args = words[0], words[1:]
        if cmd in ("pass", "blackhole", "withhold_puback", "refuse") and not args:
            self.mode = cmd
            self.delay_s = self.ack_delay_s = 0.0
        elif cmd in ("delay", "slow_ack") and len(args) == 1:
            try:
                ms = int(args[0])
            except ValueError:
                return "error " + cmd + " takes milliseconds"
            if ms < 0:
                return "error " + cmd + " takes milliseconds >= 0"
            self.mode = cmd
            self.delay_s = ms / 1000.0 if cmd == "delay" else 0.0
            self.ack_delay_s = ms / 1000.0 if cmd == "slow_ack" else 0.0
        elif cmd == "refuse_publish" and len(args) == 1:
            try:
                self.refuse_left = int(args[0])
            except ValueError:
                return "error refuse_publish takes a count"
        elif cmd == "mqtt5" and args in (["pass"], ["close"], ["refuse"]):
            self.mqtt5 = args[0]
        elif cmd == "subscribe" and args in (["pass"], ["close"]):
            self.subscribe = args[0]
        elif cmd == "cut" and not args:
            self.cuts += 1
            for c in list(self.conns):
                c.close()
        elif cmd == "stats" and not args:
            return json.dumps(self.stats(), sort_keys=True)
        else:
            return "error unknown command: " + line.strip()
        log("command", line.strip())
        return "ok"

    async def on_control(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                answer = self.command(line.decode("utf-8", "replace"))
                writer.write((answer + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def close_all(self):
        for c in list(self.conns):
            c.close()


class Connection:
    """One client connection and its broker connection: a reader and a writer per direction.

    The readers cut packets and decide (by mode) whether and when each goes out; the writers
    send them in order at their due time. PUBACKs under slow_ack go through a lane of their
    own so that they do not hold up the packets behind them."""

    def __init__(self, proxy, n, creader, cwriter, breader, bwriter):
        self.proxy = proxy
        self.n = n
        self.creader, self.cwriter = creader, cwriter
        self.breader, self.bwriter = breader, bwriter
        self.to_broker_q = asyncio.Queue()
        self.to_client_q = asyncio.Queue()
        self.ack_q = asyncio.Queue()
        self.outstanding = set()  # packet ids of QoS>0 publishes not yet acked to the client
        self.v5 = False  # the client connected with MQTT 5 (refusals need reason codes)
        self.tasks = []
        self.closed = False

    async def run(self):
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.read(self.creader, True)),
            loop.create_task(self.read(self.breader, False)),
            loop.create_task(self.write(self.to_broker_q, self.bwriter)),
            loop.create_task(self.write(self.to_client_q, self.cwriter)),
            loop.create_task(self.write(self.ack_q, self.cwriter)),
        ]
        # The first task to end (a side closed, an error, or cut) ends the connection.
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self):
        if self.closed:
            return
        self.closed = True
        for t in self.tasks:
            t.cancel()
        for w in (self.cwriter, self.bwriter):
            try:
                w.close()
            except Exception:
                pass

    async def read(self, reader, from_client):
        proxy = self.proxy
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            packets, buf = split_packets(buf + data)
            now = time.monotonic()
            for p in packets:
                ptype = p[0] >> 4
                name = TYPES.get(ptype, str(ptype))
                counts = proxy.to_broker if from_client else proxy.to_client
                counts[name] = counts.get(name, 0) + 1
                if from_client and ptype == 3 and proxy.publish_log is not None:
                    topic, batch = publish_topic_and_batch(p)
                    proxy.publish_log.write(
                        f"{topic} {batch if batch is not None else '-'} {self.n} {now:.3f}\n")
                if proxy.mode == "blackhole":
                    continue
                if from_client:
                    if ptype == 1:
                        self.v5 = protocol_level(p) == 5
                        if self.v5 and proxy.mqtt5 != "pass":
                            proxy.mqtt5_refused += 1
                            log("connection", self.n, "MQTT 5 CONNECT met with", proxy.mqtt5)
                            if proxy.mqtt5 == "refuse":
                                # CONNACK: flags 0, reason 0x84, no properties.
                                self.cwriter.write(bytes([0x20, 3, 0, 0x84, 0]))
                                await self.cwriter.drain()
                            return  # ends the connection (run() closes both sides)
                    if ptype == 8 and proxy.subscribe == "close":
                        proxy.subscribes_closed += 1
                        log("connection", self.n, "closed over a SUBSCRIBE")
                        return
                    if (ptype == 3 and (p[0] >> 1) & 3 == 1 and self.v5
                            and proxy.refuse_left > 0):
                        proxy.refuse_left -= 1
                        proxy.refused_publishes += 1
                        pid = publish_id(p)
                        # PUBACK, remaining length 3: packet id, reason 0x97 (quota exceeded).
                        # It is an answer like the broker's, so slow_ack and delay apply to it.
                        refusal = bytes([0x40, 3, pid >> 8, pid & 0xFF, 0x97])
                        if proxy.mode == "slow_ack":
                            self.ack_q.put_nowait((now + proxy.ack_delay_s, refusal, None))
                        else:
                            self.to_client_q.put_nowait((now + proxy.delay_s, refusal, None))
                        continue
                    if ptype == 3:
                        pid = publish_id(p)
                        if pid is not None:
                            self.outstanding.add(pid)
                            proxy.inflight_max = max(proxy.inflight_max, proxy.inflight())
                    self.to_broker_q.put_nowait((now + proxy.delay_s, p, None))
                    continue
                acked = None  # the publish this packet acks, once it reaches the client
                if ptype in (4, 5):
                    acked, reason = ack_id_and_reason(p)
                    if reason >= 0x80:
                        proxy.refused_acks += 1
                    if proxy.mode == "withhold_puback":
                        proxy.withheld += 1
                        continue
                    if ptype == 4 and proxy.mode == "slow_ack":
                        self.ack_q.put_nowait((now + proxy.ack_delay_s, p, acked))
                        continue
                self.to_client_q.put_nowait((now + proxy.delay_s, p, acked))

    async def write(self, queue, writer):
        while True:
            due, p, acked = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(p)
            if acked is not None:
                self.outstanding.discard(acked)
            await writer.drain()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--control", type=int, required=True)
    ap.add_argument("--publish-log", default=None)
    args = ap.parse_args()

    proxy = Proxy(args.upstream, args.publish_log)
    server = await asyncio.start_server(proxy.on_client, HOST, args.listen)
    control = await asyncio.start_server(proxy.on_control, HOST, args.control)
    log("listening", args.listen, "upstream", args.upstream, "control", args.control)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log("stopping")
    server.close()
    control.close()
    proxy.close_all()
    await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main())
