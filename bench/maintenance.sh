#!/usr/bin/env bash
# Figures for a maintenance window (SPEC T4, issue 5), not a test: on the
# demo's `billing` set (pgbench scale $SCALE, default 1 = the demo data),
# make the replicated index corruption of DESIGN "Tests", let testdb find
# it, then run the REINDEX-path window and print
#   the set's downtime (first member stopped to last member streaming), as
#   measured by the window, and what the plan said before any action,
#   and the window's whole wall time (open to closed, testdb included).
# Usage: bench/maintenance.sh   (env SCALE, TANDEM_DEMO_DIR, TANDEM_DEMO_PORT;
# Tandem is built with --release unless TANDEM_DEMO_PROFILE=debug)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export TANDEM_DEMO_DIR=${TANDEM_DEMO_DIR:-/var/tmp/tandem-bench-mw}
export TANDEM_DEMO_PORT=${TANDEM_DEMO_PORT:-7900}
export TANDEM_DEMO_SCALE=${SCALE:-1}
export TANDEM_DEMO_PROFILE=${TANDEM_DEMO_PROFILE:-release}
D=$TANDEM_DEMO_DIR
"$ROOT/deploy/demo.sh" up >/dev/null
# shellcheck disable=SC1091
. "$D/env"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
P=(-XAtq -h "$TANDEM_DEMO_BILLING_DB1_PGHOST" -p "$TANDEM_DEMO_BILLING_DB1_PGPORT" -U postgres postgres)
S=(-XAtq -h "$TANDEM_DEMO_BILLING_DB2_PGHOST" -p "$TANDEM_DEMO_BILLING_DB2_PGPORT" -U postgres postgres)
as_pg "$PGBIN/psql" "${P[@]}" -c "drop table if exists tandem_corrupt; drop function if exists tandem_f(int)" >/dev/null
as_pg "$PGBIN/psql" "${P[@]}" -c "create table tandem_corrupt (i int); insert into tandem_corrupt select generate_series(1, 1000); create function tandem_f(int) returns int language sql immutable as 'select \$1'; create index tandem_corrupt_f_idx on tandem_corrupt (tandem_f(i)); create or replace function tandem_f(int) returns int language sql immutable as 'select \$1 + 1'" >/dev/null
as_pg "$PGBIN/psql" "${P[@]}" -c "vacuum (freeze, analyze) tandem_corrupt" >/dev/null
want=$(as_pg "$PGBIN/psql" "${P[@]}" -c "select pg_current_wal_lsn()")
for _ in $(seq 1 300); do
  [ "$(as_pg "$PGBIN/psql" "${S[@]}" -c "select pg_last_wal_replay_lsn() >= '$want'")" = t ] && break
  sleep 0.1
done
set +e
tandemctl testdb billing >/dev/null 2>&1; code=$?
set -e
[ "$code" = 1 ] || { echo "expected testdb to find the corruption (exit 1), got $code" >&2; exit 1; }
admin=(--cert "$D/certs/user-admin.pem" --key "$D/certs/user-admin-key.pem")
plan=$(tandemctl "${admin[@]}" maintenance plan billing --output json)
t0=$(date +%s.%N)
w=$(tandemctl "${admin[@]}" maintenance open billing --reason "bench/maintenance.sh" --output json)
t1=$(date +%s.%N)
python3 - "$plan" "$w" "$t0" "$t1" <<'PY'
import json, sys
plan, w = json.loads(sys.argv[1]), json.loads(sys.argv[2])
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
assert w["state"] == "closed", w.get("failure")
exp, got = plan["expected_downtime_seconds"], w["downtime_seconds"]
print(f"maintenance REINDEX path on billing: repair={plan['repair']} steps={len(plan['steps'])}")
print(f"  set downtime measured {got:.2f} s, plan said {exp:.1f} s (measured/planned {got/exp:.2f})")
print(f"  window wall time (open to closed, testdb included) {t1 - t0:.2f} s")
for s in w["plan"]["steps"]:
    from datetime import datetime
    def t(x): return datetime.fromisoformat(x.replace("Z", "+00:00"))
    d = (t(s["finished_at"]) - t(s["started_at"])).total_seconds()
    print(f"    {s['action']:<15} {s['member']:<14} {d:6.2f} s (est {s['estimate_seconds']:.1f})")
PY
