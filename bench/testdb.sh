#!/usr/bin/env bash
# Benchmark of a whole testdb (SPEC T2), not a test: on one demo set with
# pgbench data (scale $SCALE, default 50), in one run, time
#   hand:   the same tools run by hand in sequence on the same standby
#           (pg_ctl stop; cp -a; pg_ctl start + wait streaming; private
#           instance on the copy; pg_amcheck; pg_dumpall; stop; pg_checksums)
#   tandem: `tandemctl testdb billing` (copy hashed + fsynced, same checks)
# and print tandem/hand as a ratio, and the standby's downtime of each.
# Usage: bench/testdb.sh [ROUNDS]   (env SCALE, TANDEM_DEMO_DIR, TANDEM_DEMO_PORT;
# Tandem is built with --release unless TANDEM_DEMO_PROFILE=debug)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
export TANDEM_DEMO_DIR=${TANDEM_DEMO_DIR:-/var/tmp/tandem-bench}
export TANDEM_DEMO_PORT=${TANDEM_DEMO_PORT:-7800}
export TANDEM_DEMO_SCALE=${SCALE:-50}
export TANDEM_DEMO_PROFILE=${TANDEM_DEMO_PROFILE:-release}
D=$TANDEM_DEMO_DIR
"$ROOT/deploy/demo.sh" up >/dev/null
# shellcheck disable=SC1091
. "$D/env"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
S=$D/pg/billing-db2 SSOCK=$D/sock/billing-db2 SPORT=$TANDEM_DEMO_BILLING_DB2_PGPORT
H=$D/bench-hand; HSOCK=$D/bench-hand.sock
now() { date +%s.%N; }
size=$(du -sb "$S" | cut -f1)

hand() {
  rm -rf "$H" "$HSOCK"; mkdir -p "$HSOCK"; chown postgres "$HSOCK" "$D"
  local t0 t_up
  t0=$(now)
  as_pg "$PGBIN/pg_ctl" stop -D "$S" -m fast -w >/dev/null
  as_pg cp -a "$S" "$H"
  as_pg "$PGBIN/pg_ctl" start -D "$S" -w -l "$D/logs/bench-standby.log" >/dev/null
  t_up=$(now)
  until [ "$(as_pg psql -XAtq -h "$SSOCK" -p "$SPORT" -U postgres -c "select status from pg_stat_wal_receiver" 2>/dev/null)" = streaming ]; do sleep 0.1; done
  rm -f "$H/standby.signal" "$H/postmaster.pid"
  as_pg "$PGBIN/pg_ctl" start -D "$H" -w -l "$D/logs/bench-hand.log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$HSOCK' -c port=5432 -c archive_mode=off -c primary_conninfo='' -c max_wal_senders=0" >/dev/null
  as_pg "$PGBIN/pg_amcheck" --all --heapallindexed --parent-check --install-missing -h "$HSOCK" -p 5432 -U postgres >/dev/null 2>&1
  as_pg "$PGBIN/pg_dumpall" --no-sync -f /dev/null -h "$HSOCK" -p 5432 -U postgres
  as_pg "$PGBIN/pg_ctl" stop -D "$H" -m fast -w >/dev/null
  as_pg "$PGBIN/pg_checksums" --check -D "$H" >/dev/null
  local t1; t1=$(now)
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t_up - $t0" | bc)"
}

tandem() {
  local out t0 t1
  t0=$(now)
  out=$(tandemctl testdb billing --output json)
  t1=$(now)
  local down; down=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sets"][0]["verdict"]["standby_downtime_seconds"])')
  echo "$(echo "$t1 - $t0" | bc) $down"
}

echo "data directory of billing-db2: $((size / 1048576)) MiB (pgbench scale $TANDEM_DEMO_SCALE); $ROUNDS rounds, alternating, warm page cache"
hand >/dev/null; tandem >/dev/null   # warm-up
th=0; tt=0; dh=0; dt=0
for i in $(seq 1 "$ROUNDS"); do
  read -r a b < <(hand); read -r c d < <(tandem)
  printf 'round %d: hand %6.2f s (standby down %5.2f s) | tandem %6.2f s (standby down %5.2f s)\n' "$i" "$a" "$b" "$c" "$d"
  th=$(echo "$th + $a" | bc); tt=$(echo "$tt + $c" | bc); dh=$(echo "$dh + $b" | bc); dt=$(echo "$dt + $d" | bc)
done
printf 'mean: hand %.2f s, tandem %.2f s, ratio tandem/hand %.3f (goal <= 1.1)\n' \
  "$(echo "$th / $ROUNDS" | bc -l)" "$(echo "$tt / $ROUNDS" | bc -l)" "$(echo "$tt / $th" | bc -l)"
printf 'standby downtime: hand (cp -a, no fsync) %.2f s, tandem (hashed, fsynced copy) %.2f s\n' \
  "$(echo "$dh / $ROUNDS" | bc -l)" "$(echo "$dt / $ROUNDS" | bc -l)"
rm -rf "$H" "$HSOCK"
[ "${KEEP:-0}" = 1 ] || "$ROOT/deploy/demo.sh" down >/dev/null
