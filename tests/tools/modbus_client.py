#!/usr/bin/python3
"""A Modbus TCP client on pymodbus: reads and writes registers independently of Ferry's code.

Run with Debian's interpreter (/usr/bin/python3), which has python3-pymodbus (3.0.x):

    /usr/bin/python3 modbus_client.py --port P read holding|input|coil|discrete ADDR COUNT
    /usr/bin/python3 modbus_client.py --port P write holding ADDR VALUE [VALUE]...
    /usr/bin/python3 modbus_client.py --port P write coil ADDR 0|1

`read` prints the registers (or bits as 0/1) in decimal, separated by spaces, on one line.
`write` uses FC 16 for registers and FC 5 for a coil and prints "ok". Addresses are 0-based
protocol addresses; unit id 1; 127.0.0.1 only. Exit 1 with the error on stderr on failure.
"""

import argparse
import sys

from pymodbus.client import ModbusTcpClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("op", choices=("read", "write"))
    parser.add_argument("table", choices=("holding", "input", "coil", "discrete"))
    parser.add_argument("address", type=int)
    parser.add_argument("values", type=int, nargs="+")
    args = parser.parse_args()

    client = ModbusTcpClient("127.0.0.1", port=args.port, timeout=3)
    if not client.connect():
        print(f"modbus_client: cannot connect to 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    try:
        if args.op == "read":
            count = args.values[0]
            call = {
                "holding": client.read_holding_registers,
                "input": client.read_input_registers,
                "coil": client.read_coils,
                "discrete": client.read_discrete_inputs,
            }[args.table]
            rsp = call(args.address, count, slave=1)
            if rsp.isError():
                print(f"modbus_client: {rsp}", file=sys.stderr)
                return 1
            if args.table in ("coil", "discrete"):
                values = [1 if b else 0 for b in rsp.bits[:count]]
            else:
                values = rsp.registers
            print(" ".join(str(v) for v in values))
            return 0
        if args.table == "holding":
            rsp = client.write_registers(args.address, args.values, slave=1)
        elif args.table == "coil":
            rsp = client.write_coil(args.address, bool(args.values[0]), slave=1)
        else:
            print("modbus_client: only holding registers and coils are writable", file=sys.stderr)
            return 1
        if rsp.isError():
            print(f"modbus_client: {rsp}", file=sys.stderr)
            return 1
        print("ok")
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
