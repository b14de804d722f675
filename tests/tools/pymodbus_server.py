#!/usr/bin/python3
"""A Modbus TCP server on pymodbus: an independent implementation to test Ferry against.

Run with Debian's interpreter (/usr/bin/python3), which has python3-pymodbus (3.0.x):

    /usr/bin/python3 pymodbus_server.py --port P [--set SPEC]...
    /usr/bin/python3 pymodbus_server.py --serial DEVICE [--baud B] [--parity N|E|O] [--set SPEC]...

--serial serves Modbus RTU on a serial device (e.g. one end of a socat pty pair; python3-serial
and python3-serial-asyncio) instead of TCP: 8 data bits, 1 stop bit, --baud 9600 and --parity N
by default.

SPEC is the same as for ferry_modbus_sim (tests/tools/modbus_sim.cpp):

    TABLE:ADDR=TYPE[:ORDER]:VALUE
      TABLE  holding | input | coil | discrete
      TYPE   bool u16 i16 u32 i32 u64 i64 f32 f64 str
      ORDER  abcd (default) | dcba | badc | cdab

Byte orders (CONTRACT.md), for a value whose big-endian bytes are A B C D [E F G H]:
  abcd  most significant register first, big-endian within each register
  cdab  registers reversed (least significant first)
  badc  most significant register first, the two bytes of each register swapped
  dcba  fully little-endian: registers reversed and bytes swapped
Strings: two characters per register, high byte first; badc/dcba swap the bytes of each
register. The encoding here is written with `struct`, independently of modbus_encode.hpp,
so that the two simulators cross-check each other.

--unit-set UNITS:SPEC (repeatable) sets a value for these unit ids only ("5:input:0=f32:230",
"3-4:holding:10=u16:1"): each unit named by a --unit-set has a datastore of its own, holding the
--set values and then its own; the others share one. --sparse: a table holds only the registers
(and bits) that --set and --unit-set define, and a read or write touching any other address is
answered with exception 2 (ILLEGAL DATA ADDRESS), as a real device with gaps in its register map
answers; without it every table covers the whole address space, zero where nothing is set.

--units SPEC answers only these unit ids ("1-27", "1,2,5" or both: "1-3,7"); the others get
no answer at all (a unit that is not there). --answer-after UNIT=SECONDS makes UNIT answer only
from SECONDS after the server serves (a unit that comes back). --log FILE writes one line per
request, flushed: "MS UNIT FC ADDRESS COUNT" for a read or write of the datastore, "MS UNIT
silent" for a request left unanswered, and "MS connect" for each TCP connection accepted (MS:
Unix time in milliseconds, with a fraction).

Addresses are 0-based protocol addresses. pymodbus's ModbusSlaveContext adds 1 to every
address unless zero_mode=True (its "Modicon 1-based" convention); we use zero_mode=True so
that a read of protocol address N returns what --set put at N.

Binds 127.0.0.1 only. SIGTERM or SIGINT: close every connection and exit 0.
"""

import argparse
import asyncio
import logging
import signal
import struct
import sys
import time

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusSparseDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.exceptions import NoSuchSlaveException
from pymodbus.server.async_io import (
    ModbusConnectedRequestHandler,
    ModbusSerialServer,
    ModbusTcpServer,
)
from pymodbus.transaction import ModbusRtuFramer

SIZE = 65536  # every table covers the whole protocol address space

# struct format (big-endian) and register count per numeric type.
FORMATS = {
    "u16": (">H", 1),
    "i16": (">h", 1),
    "u32": (">I", 2),
    "i32": (">i", 2),
    "u64": (">Q", 4),
    "i64": (">q", 4),
    "f32": (">f", 2),
    "f64": (">d", 4),
}
ORDERS = ("abcd", "dcba", "badc", "cdab")
TABLES = ("holding", "input", "coil", "discrete")


def apply_order(data: bytes, order: str, reverse_registers: bool = True) -> list:
    """Big-endian bytes -> list of register values in the given byte order."""
    regs = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order in ("cdab", "dcba") and reverse_registers:
        regs.reverse()
    if order in ("badc", "dcba"):
        regs = [r[::-1] for r in regs]
    return [(r[0] << 8) | r[1] for r in regs]


def encode(type_: str, order: str, text: str) -> list:
    """The registers (or, for bool, the single bit) for one --set value."""
    if type_ == "bool":
        if text in ("1", "true"):
            return [1]
        if text in ("0", "false"):
            return [0]
        raise ValueError("bool must be 0, 1, true or false")
    if type_ == "str":
        data = text.encode("latin-1")
        if len(data) % 2:
            data += b"\0"  # pad the last register's low byte
        return apply_order(data, order, reverse_registers=False)
    if type_ not in FORMATS:
        raise ValueError(f"unknown type {type_!r}")
    fmt, _ = FORMATS[type_]
    value = float(text) if type_.startswith("f") else int(text, 0)
    return apply_order(struct.pack(fmt, value), order)  # struct range-checks integers


def parse_set(spec: str):
    """'TABLE:ADDR=TYPE[:ORDER]:VALUE' -> (table, address, values)."""
    left, sep, right = spec.partition("=")
    if not sep:
        raise ValueError("missing '='")
    table, _, addr = left.partition(":")
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    address = int(addr, 0)
    type_, _, rest = right.partition(":")
    order = "abcd"
    head, sep, tail = rest.partition(":")
    if sep and head in ORDERS:  # an order is present; the value may itself contain ':'
        order, rest = head, tail
    if table in ("coil", "discrete") and type_ not in ("bool", "u16"):
        raise ValueError("coil/discrete take bool")
    values = encode(type_, order, rest)
    if not 0 <= address or address + len(values) > SIZE:
        raise ValueError("address out of range")
    return table, address, values


def parse_units(spec: str) -> set:
    """'1-3,7' -> {1, 2, 3, 7}."""
    units = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        units.update(range(int(lo), int(hi or lo) + 1))
    return units


class RequestLog:
    """The --log file: one flushed line per request."""

    def __init__(self, path):
        self.out = open(path, "a", encoding="ascii") if path else None

    def write(self, *fields) -> None:
        if self.out:
            print(f"{time.time() * 1000:.1f}", *fields, file=self.out, flush=True)


class LoggingSlave(ModbusSlaveContext):
    """The datastore, logging each access with the unit id the request named."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log
        self.unit = 0  # set by UnitFilter before each request (one request at a time)

    def getValues(self, fc_as_hex, address, count=1):
        self.log.write(self.unit, fc_as_hex, address, count)
        return super().getValues(fc_as_hex, address, count)

    def setValues(self, fc_as_hex, address, values):
        self.log.write(self.unit, fc_as_hex, address, len(values))
        super().setValues(fc_as_hex, address, values)


class UnitFilter(ModbusServerContext):
    """The datastore of each unit id that answers (--units, --answer-after): its own (--unit-set)
    or the shared one; no answer for the others (with ignore_missing_slaves: pymodbus then sends
    nothing)."""

    def __init__(self, slave, slaves, units, answer_after, log):
        super().__init__(slaves=slave, single=True)
        self.slave = slave
        self.own = slaves  # unit -> its own datastore (not `slaves`: a method of the base)
        self.units = units  # None: every unit id
        self.answer_after = answer_after  # unit -> monotonic time from which it answers
        self.log = log

    def __getitem__(self, unit):
        late = self.answer_after.get(unit)
        if (self.units is not None and unit not in self.units and late is None) or (
            late is not None and time.monotonic() < late
        ):
            self.log.write(unit, "silent")
            raise NoSuchSlaveException(f"unit {unit} does not answer")
        slave = self.own.get(unit, self.slave)
        slave.unit = unit
        return slave


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--serial")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--unit-set", action="append", default=[], dest="unit_sets")
    parser.add_argument("--sparse", action="store_true")
    parser.add_argument("--units")
    parser.add_argument("--answer-after", action="append", default=[], dest="answer_after")
    parser.add_argument("--log")
    args = parser.parse_args()
    log = RequestLog(args.log)
    units = parse_units(args.units) if args.units else None
    answer_after = {}
    for spec in args.answer_after:
        unit, _, seconds = spec.partition("=")
        answer_after[int(unit)] = float(seconds)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    common = []  # (table, address, values) of every --set
    own = {}  # unit -> the same for its --unit-set values
    try:
        for spec in args.sets:
            common.append(parse_set(spec))
        for spec in args.unit_sets:
            which, _, rest = spec.partition(":")
            for unit in parse_units(which):
                own.setdefault(unit, []).append(parse_set(rest))
    except (ValueError, struct.error) as exc:
        print(f"pymodbus_server: --set {spec}: {exc}", file=sys.stderr)
        return 2

    def make_slave(sets):
        if args.sparse:
            blocks = {t: ModbusSparseDataBlock({}) for t in TABLES}
        else:
            blocks = {t: ModbusSequentialDataBlock(0, [0] * SIZE) for t in TABLES}
        for table, address, values in sets:
            blocks[table].setValues(address, values)
        # zero_mode=True: protocol address N is datastore address N (see the module docstring).
        return LoggingSlave(
            log,
            hr=blocks["holding"],
            ir=blocks["input"],
            co=blocks["coil"],
            di=blocks["discrete"],
            zero_mode=True,
        )

    slave = make_slave(common)
    slaves = {unit: make_slave(common + sets) for unit, sets in own.items()}
    context = UnitFilter(slave, slaves, units, answer_after, log)

    class LoggingHandler(ModbusConnectedRequestHandler):
        def connection_made(self, transport):
            log.write("connect")
            super().connection_made(transport)

    def start_clock() -> None:
        # --answer-after counts from when the server serves.
        now = time.monotonic()
        for unit in answer_after:
            answer_after[unit] += now

    async def run_serial() -> None:
        server = ModbusSerialServer(
            context,
            framer=ModbusRtuFramer,
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
            bytesize=8,
            stopbits=1,
            ignore_missing_slaves=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        if server.transport is None:
            raise OSError(f"cannot open {args.serial}")
        start_clock()
        print(f"pymodbus_server: serving RTU on {args.serial}", file=sys.stderr, flush=True)
        await stop.wait()
        await server.shutdown()

    async def run() -> None:
        server = ModbusTcpServer(
            context,
            address=("127.0.0.1", args.port),
            allow_reuse_address=True,
            handler=LoggingHandler,
            ignore_missing_slaves=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.create_task(server.serve_forever())
        # server.serving resolves once the socket listens; if binding fails, the
        # serve_forever task ends first with the error.
        await asyncio.wait({serving, server.serving}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # raises the bind error
        start_clock()
        print(f"pymodbus_server: listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        await stop.wait()
        await server.shutdown()
        serving.cancel()
        try:
            await serving
        except asyncio.CancelledError:
            pass

    asyncio.run(run_serial() if args.serial else run())
    print("pymodbus_server: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
