#!/usr/bin/python3
"""Writes the large-site config of issue 16: DEVICES Modbus TCP devices x POINTS uint16 points.

Usage: bench/large_config.py [DEVICES [POINTS [OUT [MODBUS_PORT [BROKER_URI]]]]]
       (defaults: 500 100 /tmp/large/ferry.yaml 15020 tcp://127.0.0.1:1883)

500 x 100 (50,000 points) is 2.9 MB of YAML; docs/PERFORMANCE.md "Config loading" measures
`ferry check` on it and on 50 x 100; bench/large_startup.py runs it (`ferry run` to ready).
"""
import os
import sys


def main():
    devices = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    points = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    out = sys.argv[3] if len(sys.argv) > 3 else "/tmp/large/ferry.yaml"
    port = sys.argv[4] if len(sys.argv) > 4 else "15020"
    broker = sys.argv[5] if len(sys.argv) > 5 else "tcp://127.0.0.1:1883"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    lines = [
        "gateway:",
        "  id: bench",
        "  data_dir: " + os.path.join(os.path.dirname(os.path.abspath(out)), "data"),
        "devices:",
    ]
    for d in range(devices):
        lines += [
            f"  - id: dev{d}",
            "    driver: modbus_tcp",
            "    host: 127.0.0.1",
            "    port: " + port,
            "    poll_interval: 1000ms",
            "    points:",
        ]
        lines += [f"      - {{ name: r{n}, address: {n}, type: uint16, unit: u }}" for n in range(points)]
    lines += [
        "rules:",
        '  - { name: all, match: "#", batch: { max_events: 500, max_age: 1s },',
        '      publish: { topic: "bench/{gateway}/{device}", qos: 1 } }',
        "upstream:",
        "  mqtt:",
        "    uris: [" + broker + "]",
        "  spool:",
        "    fsync: batch",
        "",
    ]
    with open(out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
