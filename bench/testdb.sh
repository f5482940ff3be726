#!/usr/bin/env bash
# Benchmark of a whole testdb (SPEC T2), not a test: on one demo set with
# pgbench data (scale $SCALE, default 50), in one run, time
#   hand:   the same tools run by hand in sequence on the same standby
#           (pg_ctl stop; cp -a; pg_ctl start + wait streaming; private
#           instance on the copy; pg_amcheck; pg_dumpall; stop; pg_checksums)
#   tandem: `tandemctl testdb billing --mode MODE` for each of $MODES
#           (default "online cold"; copy hashed + fsynced, same checks)
# while a client on the primary commits single-row inserts at a fixed rate
# (pgbench -R $RATE, default 50/s). For each it prints the whole time as a
# ratio to hand, the standby's downtime, and the primary's commit latency
# (median, p99, max) during the test as a ratio to the same client with no
# test running. The copy method is the agent's (auto: a clone when the
# demo directory is on a filesystem that can clone, e.g. XFS with reflink;
# put TANDEM_DEMO_DIR on one to measure clone copies).
# Usage: bench/testdb.sh [ROUNDS]   (env SCALE, MODES, RATE, SYNC=1 to make
# the standby synchronous (cold mode then runs with --allow-commit-stall),
# TANDEM_DEMO_DIR, TANDEM_DEMO_PORT; Tandem is built with --release unless
# TANDEM_DEMO_PROFILE=debug)
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

P=$D/pg/billing-db1 PSOCK=$D/sock/billing-db1 PPORT=$TANDEM_DEMO_BILLING_DB1_PGPORT
MODES=${MODES:-online cold}
RATE=${RATE:-50}
L=$D/bench-latency; mkdir -p "$L"; chown postgres "$L"
as_pg psql -XAtq -h "$PSOCK" -p "$PPORT" -U postgres -c "create table if not exists bench_commits (at timestamptz)" >/dev/null
printf 'insert into bench_commits values (now());\n' >"$L/insert.sql"
if [ "${SYNC:-0}" = 1 ]; then
  as_pg psql -XAtq -h "$PSOCK" -p "$PPORT" -U postgres -c "alter system set synchronous_standby_names = '*'" -c "select pg_reload_conf()" >/dev/null
fi

# The client: pgbench -R $RATE for $1 seconds, one log line per commit
# (latency in µs, then the epoch time); prints the log file.
client() {
  rm -f "$L"/lat*
  as_pg "$PGBIN/pgbench" -n -c 1 -R "$RATE" -T "$1" -f "$L/insert.sql" -l --log-prefix="$L/lat" \
    -h "$PSOCK" -p "$PPORT" -U postgres postgres >/dev/null 2>&1
  ls "$L"/lat* | head -n 1
}

# Latencies (ms) of the commits started between $2 and $3 (epoch s) in log $1:
# "median p99 max count".
latency() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
log, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lat = []
for line in open(log):
    f = line.split()
    start = int(f[4]) + int(f[5]) / 1e6 - int(f[2]) / 1e6
    if t0 <= start <= t1:
        lat.append(int(f[2]) / 1000)
lat.sort()
if not lat:
    print("0 0 0 0"); sys.exit()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{q(0.5):.2f} {q(0.99):.2f} {lat[-1]:.2f} {len(lat)}")
PY
}

# One test in mode $1 under the client: "seconds downtime median p99 max".
tandem() {
  local mode=$1 out t0 t1 log extra=""
  [ "${SYNC:-0}" = 1 ] && [ "$mode" = cold ] && extra=--allow-commit-stall
  client "$WINDOW" >"$L/which" &
  local cpid=$!
  sleep 1
  t0=$(now)
  out=$(tandemctl testdb billing --mode "$mode" $extra --output json)
  t1=$(now)
  wait "$cpid"; log=$(cat "$L/which")
  local down; down=$(printf '%s' "$out" | python3 -c 'import json,sys; v=json.load(sys.stdin)["sets"][0]["verdict"]; assert v["kind"]=="clean", v; print(v.get("standby_downtime_seconds", 0))')
  read -r med p99 max _ < <(latency "$log" "$t0" "$t1")
  echo "$(echo "$t1 - $t0" | bc) $down $med $p99 $max"
}

# The client alone for as long as a test takes: "median p99 max".
baseline() {
  local log t0
  t0=$(now)
  log=$(client "$1")
  read -r med p99 max _ < <(latency "$log" "$(echo "$t0 + 1" | bc)" "$(echo "$t0 + $1 - 1" | bc)")
  echo "$med $p99 $max"
}

echo "data directory of billing-db2: $((size / 1048576)) MiB (pgbench scale $TANDEM_DEMO_SCALE); $ROUNDS rounds, alternating, warm page cache; client $RATE commits/s on the primary${SYNC:+ (synchronous standby)}"
hand >/dev/null; tandem online >/dev/null 2>&1 || true   # warm-up
read -r T_HAND _ < <(hand)
WINDOW=$(printf "%.0f" "$(echo "$T_HAND * 3 + 10" | bc)")
read -r bmed bp99 bmax < <(baseline "$WINDOW")
printf 'no test: commit latency median %.2f ms, p99 %.2f ms, max %.2f ms\n' "$bmed" "$bp99" "$bmax"
declare -A tt dt mm pp xx
th=0; dh=0
for m in $MODES; do tt[$m]=0; dt[$m]=0; mm[$m]=0; pp[$m]=0; xx[$m]=0; done
for i in $(seq 1 "$ROUNDS"); do
  read -r a b < <(hand)
  th=$(echo "$th + $a" | bc); dh=$(echo "$dh + $b" | bc)
  line=$(printf 'round %d: hand %6.2f s (down %5.2f s)' "$i" "$a" "$b")
  for m in $MODES; do
    read -r c d med p99 max < <(tandem "$m")
    line+=$(printf ' | %s %6.2f s (down %5.2f s, commit p99 %.1f ms, max %.1f ms)' "$m" "$c" "$d" "$p99" "$max")
    tt[$m]=$(echo "${tt[$m]} + $c" | bc); dt[$m]=$(echo "${dt[$m]} + $d" | bc)
    mm[$m]=$(echo "${mm[$m]} + $med" | bc); pp[$m]=$(echo "${pp[$m]} + $p99" | bc)
    xx[$m]=$(echo "if (${xx[$m]} > $max) ${xx[$m]} else $max" | bc)
  done
  echo "$line"
done
printf 'hand: mean %.2f s, standby down %.2f s (cp -a, no fsync)\n' "$(echo "$th / $ROUNDS" | bc -l)" "$(echo "$dh / $ROUNDS" | bc -l)"
for m in $MODES; do
  printf '%s: mean %.2f s, ratio to hand %.3f; standby down %.2f s; commit latency median %.2f ms (%.2fx), p99 %.2f ms (%.2fx no test), max %.2f ms\n' \
    "$m" "$(echo "${tt[$m]} / $ROUNDS" | bc -l)" "$(echo "${tt[$m]} / $th" | bc -l)" "$(echo "${dt[$m]} / $ROUNDS" | bc -l)" \
    "$(echo "${mm[$m]} / $ROUNDS" | bc -l)" "$(echo "${mm[$m]} / $ROUNDS / $bmed" | bc -l)" \
    "$(echo "${pp[$m]} / $ROUNDS" | bc -l)" "$(echo "${pp[$m]} / $ROUNDS / $bp99" | bc -l)" "${xx[$m]}"
done
if [ "${SYNC:-0}" = 1 ]; then
  as_pg psql -XAtq -h "$PSOCK" -p "$PPORT" -U postgres -c "alter system reset synchronous_standby_names" -c "select pg_reload_conf()" >/dev/null
fi
rm -rf "$H" "$HSOCK" "$L"
[ "${KEEP:-0}" = 1 ] || "$ROOT/deploy/demo.sh" down >/dev/null
