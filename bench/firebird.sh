#!/usr/bin/env bash
# Benchmark of testdb and backup+verify on Firebird 3, not a test: on the
# demo's Firebird set (`carbon`, TANDEM_DEMO_FIREBIRD=1) grown to at least
# $SIZE_MB MiB (default 1100: payments rows of five random UUIDs each, which
# Firebird's record compression cannot shrink, under a primary key and an
# index on paid_at), in one run, for $ROUNDS rounds (default 2), time
#   testdb, hand:   nbackup -L; cp; nbackup -N; nbackup -F on the copy;
#                   gfix -v -full; gbak -b to /dev/null (the issue's list,
#                   plus the logical read Tandem runs too)
#   testdb, extra:  what Tandem's lost-rows check does, by hand: gfix -sweep,
#                   fbstat -i, a count of each table through its primary key
#   testdb, tandem: `tandemctl testdb carbon` (copy hashed and fsynced, the
#                   same checks, the lost-rows check) and its step timings
#   backup, hand:   gbak -b of the live database, gbak -c into a scratch
#                   database
#   backup, tandem: `tandemctl backup carbon` (a testdb's copy and checks,
#                   then gbak -b of the copy, gbak -c, row counts, gfix -v
#                   -full and the lost-rows check of the restored database,
#                   pack) and its step timings
# and prints each as a ratio to hand. The demo stays up; deploy/demo.sh down
# (with the same TANDEM_DEMO_DIR) removes it.
# Usage: bench/firebird.sh [ROUNDS]   (env SIZE_MB, TANDEM_DEMO_DIR,
# TANDEM_DEMO_PORT, TANDEM_DEMO_FIREBIRD_PORT; Tandem is built with --release
# unless TANDEM_DEMO_PROFILE=debug)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-2}
SIZE_MB=${SIZE_MB:-1100}
export TANDEM_DEMO_DIR=${TANDEM_DEMO_DIR:-/var/tmp/tandem-fbbench}
export TANDEM_DEMO_PORT=${TANDEM_DEMO_PORT:-7950}
export TANDEM_DEMO_METRICS_PORT=${TANDEM_DEMO_METRICS_PORT:-9750}
export TANDEM_DEMO_FIREBIRD=1
export TANDEM_DEMO_FIREBIRD_PORT=${TANDEM_DEMO_FIREBIRD_PORT:-3056}
export TANDEM_DEMO_PROFILE=${TANDEM_DEMO_PROFILE:-release}
D=$TANDEM_DEMO_DIR
"$ROOT/deploy/demo.sh" up >/dev/null 2>/tmp/tandem-fbbench-up.log || { cat /tmp/tandem-fbbench-up.log >&2; exit 2; }
# shellcheck disable=SC1091
. "$D/env"
FB=$D/fb DB=$D/fb/data/carbon.fdb DSN=$TANDEM_DEMO_CARBON_DSN
PW=$(head -n 1 "$TANDEM_DEMO_CARBON_PASSWORD_FILE")
AHOME=$D/agents/carbon-db/home
if [ "$(id -u)" = 0 ]; then FB_USER=firebird; else FB_USER=$(id -un); fi
# A Firebird tool as the server's OS user, with the demo server's root.
fb() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && FIREBIRD=$FB/root ISC_USER=SYSDBA ISC_PASSWORD=$PW LC_ALL=C \
      setpriv --reuid="$FB_USER" --regid="$FB_USER" --init-groups -- "$@")
  else
    FIREBIRD=$FB/root ISC_USER=SYSDBA ISC_PASSWORD=$PW LC_ALL=C "$@"
  fi
}
now() { date +%s.%N; }
el() { echo "$2 - $1" | bc; }
ratio() { echo "scale=3; $1 / $2" | bc; }

# Grow the database to SIZE_MB: 400000 rows a transaction, at most 40.
chunk=0
while [ "$(stat -c %s "$DB")" -lt $((SIZE_MB << 20)) ]; do
  chunk=$((chunk + 1))
  [ "$chunk" -le 40 ] || { echo "bench/firebird.sh: $DB is still under $SIZE_MB MiB after 40 chunks" >&2; exit 2; }
  fb isql-fb -q -b "$DSN" >/dev/null <<'EOF'
set term ^;
execute block as
  declare i integer = 0;
  declare n integer;
begin
  select count(*) from payments into :n;
  while (i < 400000) do begin
    insert into payments (account_id, amount, paid_at, note)
    values (mod(:i, 50) + 1, mod(:i * 37, 5000) / 10.0,
            dateadd(:n + :i second to timestamp '2026-01-01 00:00:00'),
            uuid_to_char(gen_uuid()) || uuid_to_char(gen_uuid()) || uuid_to_char(gen_uuid()) ||
            uuid_to_char(gen_uuid()) || uuid_to_char(gen_uuid()));
    i = i + 1;
  end
end^
set term ;^
commit;
EOF
done
size=$(stat -c %s "$DB")
rows=$(printf 'set list on;\nselect count(*) as n from payments;\n' | fb isql-fb -q -b "$DSN" | awk '/^N /{print $2}')

H=$D/bench-hand
mkdir -p "$H"; chown "$FB_USER" "$H"
# Embedded on the copy, with a lock directory of its own (as the agent does).
emb() { fb env -u ISC_PASSWORD FIREBIRD_LOCK="$H/lock" "$@"; }

# testdb by hand: prints "total [extra]".
hand_testdb() {
  local extra=$1 t0 t1 t2
  rm -rf "$H"/*; mkdir -p "$H/lock"; chown -R "$FB_USER" "$H"
  t0=$(now)
  fb nbackup -L "$DB"
  fb cp "$DB" "$H/copy.fdb"
  fb nbackup -N "$DB"
  emb nbackup -F "$H/copy.fdb"
  emb gfix -v -full "$H/copy.fdb" >/dev/null
  emb gbak -b -user SYSDBA "$H/copy.fdb" stdout >/dev/null
  t1=$(now)
  if [ "$extra" = 1 ]; then
    emb gfix -sweep "$H/copy.fdb"
    emb fbstat -i "$H/copy.fdb" >/dev/null
    # Every table through its primary key, as the lost-rows check counts.
    local sql="" t ix
    for t in CLIENTS ACCOUNTS PAYMENTS; do
      ix=$(printf "set list on;\nselect trim(rdb\$index_name) as ix from rdb\$relation_constraints where rdb\$relation_name = '%s' and rdb\$constraint_type = 'PRIMARY KEY';\n" "$t" |
        emb isql-fb -q -b "$H/copy.fdb" | awk '/^IX /{print $2}')
      sql="${sql}select count(*) from (select 1 as x from $t plan ($t order $ix) order by id);
"
    done
    printf '%s' "$sql" | emb isql-fb -q -b "$H/copy.fdb" >/dev/null
  fi
  t2=$(now)
  rm -rf "$H"/*
  echo "$(el "$t0" "$t1") $(el "$t0" "$t2")"
}

hand_backup() {
  local t0 t1
  rm -rf "$H"/*; mkdir -p "$H/lock"; chown -R "$FB_USER" "$H"
  t0=$(now)
  fb gbak -b "$DSN" "$H/carbon.fbk"
  emb gbak -c "$H/carbon.fbk" "$H/scratch.fdb"
  t1=$(now)
  rm -rf "$H"/*
  el "$t0" "$t1"
}

# Tandem's run: "total step=seconds ..." from its state file.
tandem() {
  local t0 t1
  t0=$(now)
  tandemctl "$1" carbon >/dev/null 2>"$H.err" || { cat "$H.err" >&2; exit 2; }
  t1=$(now)
  python3 - "$AHOME/testdb.state.json" "$(el "$t0" "$t1")" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(sys.argv[2], " ".join(f"{x['step']}={x['seconds']:.1f}" for x in s.get("steps", [])))
PY
}

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem/{print $2}') GiB, $(uname -r); database $((size >> 20)) MiB, $rows payments rows"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  read -r h_list h_extra < <(hand_testdb 1)
  read -r t_total t_steps < <(tandem testdb)
  read -r h_list2 _ < <(hand_testdb 0)
  hb=$(hand_backup)
  read -r b_total b_steps < <(tandem backup)
  echo "  testdb hand (issue's list + gbak -b) ${h_list}s, again ${h_list2}s; hand + lost-rows work ${h_extra}s"
  echo "  testdb tandem ${t_total}s: ratio $(ratio "$t_total" "$h_list") vs hand, $(ratio "$t_total" "$h_extra") vs hand + extra"
  echo "    steps: $t_steps"
  echo "  backup+verify hand ${hb}s; tandem ${b_total}s: ratio $(ratio "$b_total" "$hb")"
  echo "    steps: $b_steps"
done
