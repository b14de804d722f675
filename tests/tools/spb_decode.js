#!/usr/bin/env node
// Decodes Sparkplug B payloads with Eclipse Tahu's JavaScript implementation
// (npm `sparkplug-payload`, installed by scripts/install-deps into ~/.cache/ferry/npm): the
// independent check the Sparkplug tests hold Ferry's encoder to.
//   node spb_decode.js FILE         one payload (raw bytes) -> its JSON on stdout
//   node spb_decode.js --hex-lines  each stdin line the hex of one payload -> one JSON line each
//                                   ({"error": "..."} for a payload Tahu cannot decode)
//   node spb_decode.js --encode     a payload as Tahu's JSON on stdin -> its bytes in hex (what
//                                   a SCADA host sends: NCMD, DCMD)
// Longs (timestamps, aliases, seq, bdSeq) are printed as numbers when they fit in 2^53, else as
// decimal strings. Run with NODE_PATH=~/.cache/ferry/npm/node_modules (or FERRY_NPM_DIR/...).
"use strict";
const fs = require("fs");
const path = require("path");
const npmDir = process.env.FERRY_NPM_DIR ||
    path.join(process.env.HOME || "/root", ".cache", "ferry", "npm");
let spb;
try {
    spb = require("sparkplug-payload");
} catch (e) {
    spb = require(path.join(npmDir, "node_modules", "sparkplug-payload"));
}
const payload = spb.get("spBv1.0");

function plain(key, value) {
    if (value && typeof value === "object" && typeof value.low === "number" &&
        typeof value.high === "number" && typeof value.toString === "function") {
        const n = Number(value.toString());
        return Number.isSafeInteger(n) ? n : value.toString();
    }
    if (value && value.type === "Buffer" && Array.isArray(value.data))
        return Buffer.from(value.data).toString("hex");
    return value;
}

function decode(bytes) {
    try {
        return JSON.stringify(payload.decodePayload(bytes), plain);
    } catch (e) {
        return JSON.stringify({error: String(e && e.message ? e.message : e)});
    }
}

if (process.argv[2] === "--hex-lines") {
    const lines = fs.readFileSync(0, "utf8").split("\n").filter((l) => l.length > 0);
    process.stdout.write(lines.map((l) => decode(Buffer.from(l.trim(), "hex"))).join("\n") + "\n");
} else if (process.argv[2] === "--encode") {
    const object = JSON.parse(fs.readFileSync(0, "utf8"));
    process.stdout.write(Buffer.from(payload.encodePayload(object)).toString("hex") + "\n");
} else if (process.argv[2]) {
    process.stdout.write(decode(fs.readFileSync(process.argv[2])) + "\n");
} else {
    process.stderr.write("usage: spb_decode.js FILE | --hex-lines\n");
    process.exit(2);
}
