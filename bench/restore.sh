#!/usr/bin/env bash
# Benchmark of a restore of the primary from a backup on the standby's host
# (issue 16), not a test: on the demo's `billing` set with pgbench data
# (scale $SCALE, default 50), one Tandem backup is taken on the standby's
# host (`tandemctl backup billing`, db2), then each round times, in the same
# run, with a warm page cache and a `sync` before each side:
#   hand:   `pgbackrest restore` of the same data (a pg_basebackup of the
#           primary, backed up once, not timed, with `pgbackrest backup
#           --type=full`: zstd level 3 as Tandem's file, process-max=2, the
#           repository in the demo directory, i.e. on the primary's host and
#           filesystem) into an empty directory beside the primary's, then
#           `pg_ctl start -w` on a private socket, until the server accepts
#           connections and is out of recovery (pgBackRest's restore makes
#           the server fetch the backup's WAL from the repository, replay it
#           and promote). No old server is stopped or moved aside.
#   tandem: `tandemctl restore billing --member db1 --yes` with no --from:
#           the newest verified backup, on db2's host. The primary's agent
#           fetches it from db2's agent over mutual TLS (R1 fetch_peer,
#           fsynced), checks the space, unpacks it with every file verified
#           against the BLAKE3 manifest and the tree fsynced (R2), while the
#           set serves; then the standby is fenced, the primary stopped and
#           moved aside, the restored directory swapped in, rolled forward
#           from the WAL archive on a private socket and promoted, the
#           sequences checked, and the server started for clients (R9).
#           (a) until the primary serves again: from the command's start to
#               the end of R9 start (`pg_ctl start -w` for clients), taken
#               from the agent's journal of the swap operation (its end
#               minus the R10 health step), so it includes the transfer;
#           (b) the whole command: (a), R10 health (two checks 2 s apart),
#               the standby re-seeded from the restored primary, streaming,
#               and the closing testdb.
# Before each tandem round the fetched file is removed from db1's backup
# directory (so the transfer happens every round), and after it the old data
# directory the restore moved aside. It prints, per round, both times, the
# ratios tandem/hand for (a) and (b), the bytes transferred and the
# transfer's throughput, and the agents' step times.
# Usage: bench/restore.sh [ROUNDS]   (env SCALE, TANDEM_DEMO_DIR,
# TANDEM_DEMO_PORT; Tandem is built with --release unless
# TANDEM_DEMO_PROFILE=debug; KEEP=1 leaves the demo running)
set -euo pipefail
shopt -s inherit_errexit   # a failing step inside $(...) stops the run
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "ROUNDS must be 1..20" >&2; exit 2; }
export TANDEM_DEMO_DIR=${TANDEM_DEMO_DIR:-/var/tmp/tandem-bench}
export TANDEM_DEMO_PORT=${TANDEM_DEMO_PORT:-7800}
export TANDEM_DEMO_SCALE=${SCALE:-50}
export TANDEM_DEMO_PROFILE=${TANDEM_DEMO_PROFILE:-release}
D=$TANDEM_DEMO_DIR
"$ROOT/deploy/demo.sh" up >/dev/null
# shellcheck disable=SC1091
. "$D/env"
export TANDEM_CERT=$D/certs/user-admin.pem TANDEM_KEY=$D/certs/user-admin-key.pem
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
now() { date +%s.%N; }
P=$D/pg/billing-db1 PSOCK=$D/sock/billing-db1 PPORT=$TANDEM_DEMO_BILLING_DB1_PGPORT
FETCHED_DIR=$D/agents/billing-db1/backups
JOURNAL=$D/agents/billing-db1/home/journal
B=$D/bench-pgbr
cleanup() {
  if [ -f "$B/r/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$B/r" -m immediate -w stop >/dev/null 2>&1 || true; fi
  if [ -f "$B/src/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$B/src" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$B"
  [ "${KEEP:-0}" = 1 ] || "$ROOT/deploy/demo.sh" down >/dev/null
}
trap cleanup EXIT

# Tandem's backup on the standby's host (not timed).
tandemctl backup billing >/dev/null
backup=$(tandemctl restore billing --member db1 --dry-run -o json)
backup=$(printf '%s' "$backup" | python3 -c '
import json, sys
b = json.load(sys.stdin)["backup"]
assert b["member"] == "db2", b
print(b["file"], b["bytes"], b["unpacked_bytes"])')
read -r bfile bbytes bunpacked <<<"$backup"

# pgBackRest's repository of the same data (not timed): a base backup of
# the primary, started on a private socket archiving to the repository,
# one full backup, stopped and removed.
rm -rf "$B"; mkdir -p "$B"/{sock,repo,log,lock,spool}; chown -R postgres "$B"
cat >"$B/pgbackrest.conf" <<EOF
[global]
repo1-path=$B/repo
compress-type=zst
compress-level=3
process-max=2
repo1-retention-full=1
log-path=$B/log
lock-path=$B/lock
spool-path=$B/spool
start-fast=y
log-level-console=warn
[bench]
pg1-path=$B/src
pg1-socket-path=$B/sock
pg1-port=5432
EOF
PGBR="pgbackrest --config=$B/pgbackrest.conf --stanza=bench"
PRIVATE="-c listen_addresses='' -c unix_socket_directories='$B/sock' -c port=5432"
as_pg "$PGBIN/pg_basebackup" -D "$B/src" -X stream -c fast -h "$PSOCK" -p "$PPORT" -U postgres
as_pg "$PGBIN/pg_ctl" -D "$B/src" -l "$B/src.log" -w start \
  -o "$PRIVATE -c archive_mode=on -c archive_command='$PGBR archive-push %p'" >/dev/null
as_pg sh -c "$PGBR stanza-create && $PGBR backup --type=full"
as_pg "$PGBIN/pg_ctl" -D "$B/src" -m fast -w stop >/dev/null
rm -rf "$B/src"
repo=$(du -sb "$B/repo/backup" | cut -f1)

# One hand round: "seconds restore_seconds" (the rest is the start,
# the replay of the backup's WAL and the promotion).
hand() {
  rm -rf "$B/r"
  sync
  local t0 tr t1 i
  t0=$(now)
  as_pg sh -c "$PGBR --pg1-path=$B/r restore"
  tr=$(now)
  as_pg "$PGBIN/pg_ctl" -D "$B/r" -l "$B/r.log" -w -t 600 start -o "$PRIVATE -c archive_mode=off" >/dev/null
  for i in $(seq 1 6000); do
    [ "$(as_pg psql -XAtq -h "$B/sock" -p 5432 -U postgres -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ] && break
    [ "$i" = 6000 ] && { echo "the hand restore did not leave recovery" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(now)
  as_pg "$PGBIN/pg_ctl" -D "$B/r" -m fast -w stop >/dev/null
  rm -rf "$B/r"
  echo "$(echo "$t1 - $t0" | bc) $(echo "$tr - $t0" | bc)"
}

# The journal records of db1's restore operations that started after $1
# (epoch s), with the tandem command's start $1 and end $2: prints
# "serving whole bytes fetch_s" then one line of step times.
report() {
  python3 - "$JOURNAL" "$1" "$2" "$3" <<'PY'
import glob, json, re, sys
from datetime import datetime, timezone
jdir, t0, t1, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
def ts(s):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?", s)
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return base + (float("0." + m.group(2)) if m.group(2) else 0.0)
assert out["state"] == "restored", out.get("reason")
ops = []
for f in glob.glob(jdir + "/*.json"):
    r = json.load(open(f))
    if r.get("kind") == "restore" and ts(r["started_at"]) >= t0 - 1:
        ops.append(r)
ops.sort(key=lambda r: ts(r["started_at"]))
assert len(ops) == 2, [o["id"] for o in ops]
prep, swap = ops
steps = {}
for r in ops:
    for s in r["steps"]:
        steps[s["step"]] = steps.get(s["step"], 0.0) + s["seconds"]
serving = ts(swap["finished_at"]) - steps.get("R10 health", 0.0) - t0
fetch = steps.get("R1 fetch_peer", 0.0)
m = [re.search(r"\((\d+) bytes\)", n) for n in prep.get("notes", [])]
fetched = [int(x.group(1)) for x in m if x]
assert fetched, "no transfer in the notes: " + repr(prep.get("notes"))
print(f"{serving:.3f} {t1 - t0:.3f} {fetched[0]} {fetch:.3f}")
# Where the time went, in order: the command's start to the prepare order,
# its steps, the gap to the swap order (the standby fenced), its steps, the
# rest of the window (the reseed, the test), from the window's own steps.
parts = [f"to prepare {ts(prep['started_at']) - t0:.2f}"]
parts += [f"{s['step']} {s['seconds']:.2f}" for s in prep["steps"]]
parts.append(f"prepare->swap {ts(swap['started_at']) - ts(prep['finished_at']):.2f}")
parts += [f"{s['step']} {s['seconds']:.2f}" for s in swap["steps"]]
for s in out["window"]["plan"]["steps"]:
    if s.get("started_at") and s.get("finished_at") and s["action"] not in ("restore_prepare", "restore"):
        parts.append(f"[{s['action']} {s['member']} {ts(s['finished_at']) - ts(s['started_at']):.2f}]")
print("; ".join(parts))
PY
}

# One tandem round: "serving whole bytes fetch_s", then the step line.
tandem() {
  rm -f "$FETCHED_DIR/$(basename "$bfile")" "$FETCHED_DIR/.$(basename "$bfile").partial"
  sync
  local t0 t1 out
  t0=$(now)
  out=$(tandemctl restore billing --member db1 --yes -o json)
  t1=$(now)
  report "$t0" "$t1" "$out"
  rm -rf "$P".before-restore-* "$D"/pg/billing-db2.tandem-failed-reseed-*
}

echo "data directory of billing-db1: $(( $(du -sb "$P" | cut -f1) / 1048576 )) MiB (pgbench scale $TANDEM_DEMO_SCALE); Tandem's backup on db2: $bbytes bytes ($((bunpacked / 1048576)) MiB unpacked); pgBackRest's: $repo bytes; $ROUNDS rounds, hand then tandem, warm page cache; load $(cut -d' ' -f1-3 /proc/loadavg)"
th=0; ta=0; tb=0
for i in $(seq 1 "$ROUNDS"); do
  res=$(hand)
  read -r h hr <<<"$res"
  res=$(tandem)
  read -r a b bytes fs <<<"$(head -n 1 <<<"$res")"
  steps=$(tail -n +2 <<<"$res")
  th=$(echo "$th + $h" | bc); ta=$(echo "$ta + $a" | bc); tb=$(echo "$tb + $b" | bc)
  printf 'round %d: hand %6.2f s (restore %.2f s) | tandem serving %6.2f s (%.3f), whole %6.2f s (%.3f) | fetched %d bytes in %.2f s (%.1f MB/s) | load %s\n' \
    "$i" "$h" "$hr" "$a" "$(echo "$a / $h" | bc -l)" "$b" "$(echo "$b / $h" | bc -l)" "$bytes" "$fs" \
    "$(echo "$bytes / $fs / 1000000" | bc -l)" "$(cut -d' ' -f1 /proc/loadavg)"
  echo "  steps: $steps"
done
printf 'hand: mean %.2f s\n' "$(echo "$th / $ROUNDS" | bc -l)"
printf 'tandem (a) until the primary serves: mean %.2f s, ratio to hand %.3f (goal at most 1.2)\n' \
  "$(echo "$ta / $ROUNDS" | bc -l)" "$(echo "$ta / $th" | bc -l)"
printf 'tandem (b) the whole command: mean %.2f s, ratio to hand %.3f\n' \
  "$(echo "$tb / $ROUNDS" | bc -l)" "$(echo "$tb / $th" | bc -l)"
