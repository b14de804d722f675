#!/usr/bin/python3
"""`ferry run` on the large site of issue 16, from exec to READY=1 and on: time, CPU, memory.

Usage: bench/large_startup.py [BUILD_DIR [DEVICES [POINTS [SECONDS]]]]
       (defaults: build 500 100 10; FERRY_BINARY=path runs another ferry)

Starts the libmodbus simulator (100 holding registers) and a mosquitto on free loopback
ports, writes the config with bench/large_config.py, starts `ferry run` with NOTIFY_SOCKET
pointing at a socket of ours, and prints: wall time and CPU (utime + stime of
/proc/PID/stat) to READY=1, VmHWM and VmRSS at ready, then VmHWM and VmRSS each second for
SECONDS. Not a test; numbers go to docs/PERFORMANCE.md ("Config loading").
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=10):
    end = time.time() + seconds
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    devices = sys.argv[2] if len(sys.argv) > 2 else "500"
    points = sys.argv[3] if len(sys.argv) > 3 else "100"
    seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    d = tempfile.mkdtemp(prefix="ferry-startup-")
    procs = []
    try:
        sim_port, mqtt_port = free_port(), free_port()
        sim = [f"{build}/tests/tools/ferry_modbus_sim", "--port", str(sim_port)]
        for r in range(int(points)):
            sim += ["--set", f"holding:{r}=u16:{r * 3}"]
        procs.append(subprocess.Popen(sim, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(f"{d}/mosquitto.conf", "w") as f:
            f.write(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n")
        procs.append(subprocess.Popen(["mosquitto", "-c", f"{d}/mosquitto.conf"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not wait_port(sim_port) or not wait_port(mqtt_port):
            sys.exit("simulator or broker did not start")
        cfg = f"{d}/ferry.yaml"
        subprocess.run([f"{HERE}/large_config.py", devices, points, cfg, str(sim_port),
                        f"tcp://127.0.0.1:{mqtt_port}"], check=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{d}/notify.sock")
        env = dict(os.environ, NOTIFY_SOCKET=f"{d}/notify.sock")
        began = time.monotonic()
        binary = os.environ.get("FERRY_BINARY", f"{build}/gateway/ferry")
        ferry = subprocess.Popen([binary, "run", "-c", cfg], env=env,
                                 stdout=subprocess.DEVNULL, stderr=open(f"{d}/ferry.log", "w"))
        procs.append(ferry)
        notify.settimeout(60)
        while True:
            msg = notify.recv(4096).decode(errors="replace")
            if "READY=1" in msg:
                break
        ready = time.monotonic() - began
        print(f"ferry run, {devices} devices x {points} points: READY=1 after {ready:.2f} s wall, "
              f"{cpu_s(ferry.pid):.2f} s CPU; VmHWM {status_kib(ferry.pid, 'VmHWM') / 1024:.1f} MiB, "
              f"VmRSS {status_kib(ferry.pid, 'VmRSS') / 1024:.1f} MiB")
        for s in range(seconds):
            time.sleep(1)
            print(f"  +{s + 1:2d} s: VmHWM {status_kib(ferry.pid, 'VmHWM') / 1024:6.1f} MiB, "
                  f"VmRSS {status_kib(ferry.pid, 'VmRSS') / 1024:6.1f} MiB, "
                  f"CPU {cpu_s(ferry.pid):.2f} s")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
