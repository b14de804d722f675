// `ferry probe modbus --scan RANGE`: which unit ids of one line answer, and which known profile
// the registers of each answering unit fit (drivers/modbus/README.md, "Scanning a line").
//
// The scan sends each unit id, in the order given, one read of `--table`/`--address`/`--count`
// (holding 0, one register, by default): one attempt, no retry, over the driver's own link
// (link.hpp), so the framing is what `ferry run` uses. The default timeout is 200 ms instead of
// the single probe's 1 s: a slave on RS-485 answers within a few milliseconds of the request's
// end (the RTU link's timeout runs to the first byte of the answer, then between bytes), and a
// line of 247 ids with few slaves on it is mostly waiting for silence: 247 x 200 ms is 50 s,
// at 1 s it would be four minutes. A slow TCP gateway in front of RS-485 needs more
// (`--timeout`).
//
// RS-485: a unit that answers after its timeout must not be taken for the next one. The RTU
// link flushes the input before each request, so a late answer that came before the next
// request is dropped; one that comes during the next unit's wait carries its own unit id, which
// the link checks: the next unit is then shown as "bad frame (bad_slave)", never as answering.
// Over TCP the link closes the connection after a timeout (a late answer would follow) and
// opens a new one for the next unit.
//
// A unit answers when it sends a well-formed answer: its registers, or an exception other than
// the gateway's 0x0A/0x0B (which say that a TCP gateway got nothing from the unit: no answer).
//
// The suggestion: every NAME.yaml of the profiles directory is loaded by the config loader as a
// device of the probe's driver naming `profile: NAME` (so its keys are read as `ferry run` reads
// them), its points planned with plan_blocks as `ferry run` plans them (per poll group, under
// the profile's max_registers, max_coils and max_gap) and read from each answering unit
// (request_delay honoured; timeout: the larger of --timeout and the profile's). A profile fits a
// unit when every request is answered with data and every point decodes to a reading (codec.hpp
// is_reading: finite). Then, per profile that fits some unit, a YAML item for `devices:` with those
// unit ids.
//
// Output (stdout, one line per unit, in this order; stable, documented in the README):
//   scanning units ... at LINK: TABLE ADDRESS (COUNT), timeout MS ms, one attempt each
//   unit ID  RESULT  LATENCY ms         RESULT: answers | exception N (NAME) |
//                                        no answer [(why)] | bad frame (REASON)
//   profiles in DIR: NAME, ...
//   unit ID  fits NAME[, NAME]  |  unit ID  no profile fits, then "  NAME: why" lines
//   the YAML snippet, after a comment line
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "drivers/modbus/link.hpp"
#include "drivers/modbus/probe.hpp"

namespace ferry::drivers::modbus {

constexpr std::chrono::milliseconds k_scan_timeout{200};

// --scan's unit ids: "1-30", "1,2,5", "1-10,20" (blanks around items allowed), each in lo..hi,
// none twice; in the order given. Empty, with the reason in `why`, when malformed.
std::vector<int> parse_unit_ids(std::string_view text, int lo, int hi, std::string& why);

// A `devices:` item for the units that fit profile `name`, on the line of `a`: id
// "NAME-{unit_id}", the driver and its serial or host keys, unit_id (a list, or one integer),
// profile. Lines end with '\n'; the item starts with "- ".
std::string device_snippet(const probe_args& a, const std::string& name,
                           const std::vector<int>& units);

// Runs the scan of a.scan over `lnk` and the suggestion; returns the exit code (probe.hpp):
// 0 when at least one unit answered, 3 when none did or the line cannot be opened.
int scan_main(const probe_args& a, link& lnk, std::FILE* out, std::FILE* err,
              const config::schema& s);

}  // namespace ferry::drivers::modbus
