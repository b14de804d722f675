#!/usr/bin/env bash
# Makes the seed corpus of tests/fuzz/spool_fuzz.cpp in tests/fuzz/corpus/spool/ (run once; the
# outputs are committed). Small spool files in the schema of docs/SPOOL.md, 512-byte pages so
# that seeds stay a few KiB: healthy (version 2 and 1), rows that must be dead-lettered (QoS 3,
# a wildcard or non-UTF-8 topic, a payload that is no JSON object, a lying bytes column), and
# the damaged fixtures of tests/fixtures/spool/ that are small.
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/spool
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# make NAME VERSION EXTRA_SQL
make() {
  local db="$tmp/$1.db" events_col="" events_val=""
  if [ "$2" = 2 ]; then events_col=", events INTEGER NOT NULL DEFAULT 0"; fi
  {
    echo "PRAGMA page_size=512; PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL;"
    echo "BEGIN;"
    echo "CREATE TABLE messages(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
    echo "  payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
    echo "  created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL$events_col);"
    echo "CREATE TABLE topics(topic TEXT PRIMARY KEY, last_batch INTEGER NOT NULL) WITHOUT ROWID;"
    echo "CREATE TABLE state(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    echo "PRAGMA application_id=1178948185; PRAGMA user_version=$2;"
    for i in 1 2 3; do
      echo "INSERT INTO messages(topic, payload, qos, retain, created_ms, bytes) VALUES("
      echo "  'plant/gw/d1', CAST('{\"gateway\":\"gw\",\"batch\":$i,\"events\":[{\"seq\":$i,\"device\":\"d1\",\"tag\":\"r0\",\"ts\":1,\"value\":$i,\"quality\":\"good\"}]}' AS BLOB),"
      echo "  1, 0, 1764236400000, 0);"
    done
    echo "UPDATE messages SET bytes = length(CAST(topic AS BLOB)) + length(payload);"
    echo "INSERT INTO topics VALUES('plant/gw/d1', 3);"
    echo "INSERT INTO state VALUES('seq_high_water', 65536);"
    echo "$3"
    echo "COMMIT; PRAGMA wal_checkpoint(TRUNCATE);"
  } | sqlite3 "$db" >/dev/null
  test "$(sqlite3 "$db" 'PRAGMA quick_check')" = ok
  cp "$db" "$out/$1.db"
}

make healthy 2 ""
make version1 1 ""
make qos3 2 "UPDATE messages SET qos = 3 WHERE id = 2;"
make wildcard_topic 2 "UPDATE messages SET topic = 'plant/gw+d1' WHERE id = 2;"
make not_utf8_topic 2 "UPDATE messages SET topic = CAST(X'706C616E742F67772FE431' AS TEXT) WHERE id = 2;"
make not_json 2 "UPDATE messages SET payload = CAST('z' || substr(CAST(payload AS TEXT), 2) AS BLOB) WHERE id = 2;"
make lying_bytes 2 "UPDATE messages SET bytes = 1000000000000 WHERE id = 2;"
make negative_bytes 2 "UPDATE messages SET bytes = -5 WHERE id = 3;"
make text_payload 2 "UPDATE messages SET payload = CAST(payload AS TEXT) WHERE id = 1;"
make empty 2 "DELETE FROM messages;"
cp ../fixtures/spool/truncated.db ../fixtures/spool/zero_bytes.db ../fixtures/spool/random_bytes.db "$out/"
ls -la "$out"
