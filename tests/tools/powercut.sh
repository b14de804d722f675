#!/bin/sh
# Simulates a power cut on the SQLite files that faultvfs tracked (FERRY_FAULTVFS_DURABLE=1):
# each of NAME, NAME-wal, NAME-journal and NAME-shm in DIR is replaced by its .durable copy
# (its content at its last successful fsync), or deleted when it was never fsynced. Run it
# after the process was killed with SIGKILL, before starting it again.
#   powercut.sh DIR [NAME]     NAME defaults to spool.db
# Files written without SQLite (and so already fsynced or not on their own terms, like the
# identity file) are left alone.
set -eu
dir=${1:?usage: powercut.sh DIR [NAME]}
name=${2:-spool.db}
for f in "$dir/$name" "$dir/$name-wal" "$dir/$name-journal" "$dir/$name-shm"; do
    if [ -e "$f.durable" ]; then
        mv -f "$f.durable" "$f"
    else
        rm -f "$f"
    fi
    rm -f "$f.durable.tmp"
done
sync
