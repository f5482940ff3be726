#!/usr/bin/env bash
# Tandem demo fleet on this machine: two replication sets (billing, crm), each
# a PostgreSQL primary and a streaming standby, a controller and four agents
# on loopback, talking mutual TLS.
#
#   deploy/demo.sh up       build, create (or keep) the fleet, print `tandemctl show`,
#                           then run the main job: `tandemctl testdb --all`
#   deploy/demo.sh status   print `tandemctl show` for a running demo
#   deploy/demo.sh down     stop everything and remove the demo directory
#
# State lives under $TANDEM_DEMO_DIR (default /var/tmp/tandem-demo). After `up`,
# `. $TANDEM_DEMO_DIR/env` sets TANDEM_CONTROLLER, TANDEM_CA, TANDEM_CERT,
# TANDEM_KEY and, per member, TANDEM_DEMO_<SET>_<MEMBER>_PGHOST/PGPORT/PGDATA.
# Ports: controller on $TANDEM_DEMO_PORT (default 7700), agents on the next four;
# Prometheus metrics on $TANDEM_DEMO_METRICS_PORT (default 9464: the controller)
# and the next four (the agents), listed in $TANDEM_DEMO_METRICS_URLS.
# Traces: set OTEL_EXPORTER_OTLP_ENDPOINT before `up` (deploy/observability).
# Data: pgbench scale $TANDEM_DEMO_SCALE (default 1) in each set.
# Build: $TANDEM_DEMO_PROFILE debug (default) or release.
# Firebird: TANDEM_DEMO_FIREBIRD=1 adds a set `carbon`: one Firebird 3 database
# (member carbon-db, a small billing schema) on a private server on port
# $TANDEM_DEMO_FIREBIRD_PORT (default 3055), its agent on the sixth port (and
# metrics port); env adds TANDEM_DEMO_CARBON_DSN, _FIREBIRD (the server's root)
# and _PASSWORD_FILE (SYSDBA's). Installs firebird3.0-server/-utils if missing.
set -euo pipefail

DEMO_DIR=${TANDEM_DEMO_DIR:-/var/tmp/tandem-demo}
BASE_PORT=${TANDEM_DEMO_PORT:-7700}
METRICS_PORT=${TANDEM_DEMO_METRICS_PORT:-9464}
SCALE=${TANDEM_DEMO_SCALE:-1}    # pgbench scale of the demo data (1 = 16 MB, 50 = 750 MB)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${TANDEM_DEMO_PROFILE:-debug}   # debug (shares the tests' build) or release
BIN=$TARGET_DIR/$PROFILE
SETS=(billing crm)
MEMBERS=(db1 db2)          # db1 starts as the primary, db2 as its standby
FIREBIRD=${TANDEM_DEMO_FIREBIRD:-0}
FB_PORT=${TANDEM_DEMO_FIREBIRD_PORT:-3055}
FB_SET=carbon FB_MEMBER=carbon-db
FB_PKG_ROOT=/usr/lib/x86_64-linux-gnu/firebird/3.0   # Debian's Firebird 3 root
FB_SECURITY=/var/lib/firebird/3.0/system/security3.fdb
NPORTS=5                   # the controller's and the agents'
[ "$FIREBIRD" = 1 ] && NPORTS=6

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 2; }

if [ "$(id -u)" = 0 ]; then OS_USER=postgres; else OS_USER=$(id -un); fi
if [ "$(id -u)" = 0 ]; then FB_USER=firebird; else FB_USER=$(id -un); fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u "$OS_USER" -- "$@"); else "$@"; fi
}

install_postgres() {
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then return; fi
  say "installing PostgreSQL from the distribution's packages"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql postgresql-contrib
}

install_firebird() {
  [ "$FIREBIRD" = 1 ] || return 0
  if [ -x /usr/sbin/firebird ] && command -v isql-fb gbak gfix nbackup fbstat >/dev/null; then return; fi
  say "installing Firebird 3 from the distribution's packages"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q firebird3.0-server firebird3.0-utils
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ctl() { "$BIN/tandemctl" "$@"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

all_running() {
  [ -f "$DEMO_DIR/env" ] || return 1
  alive "$DEMO_DIR/run/controller.pid" || return 1
  for s in "${SETS[@]}"; do
    for m in "${MEMBERS[@]}"; do
      alive "$DEMO_DIR/run/agent-$s-$m.pid" || return 1
      as_pg "$PGBIN/pg_ctl" status -D "$DEMO_DIR/pg/$s-$m" >/dev/null 2>&1 || return 1
    done
  done
  if [ "$FIREBIRD" = 1 ]; then
    alive "$DEMO_DIR/run/firebird-$FB_SET.pid" || return 1
    alive "$DEMO_DIR/run/agent-$FB_MEMBER.pid" || return 1
  fi
}

build() {
  command -v cargo >/dev/null || die "cargo is not installed; install Rust (https://rustup.rs) and run again"
  local flag=""
  [ "$PROFILE" = release ] && flag=--release
  say "building tandem (cargo build --workspace --bins $flag)"
  (cd "$ROOT" && cargo build --workspace --bins -q $flag)
}

make_set() {
  local set=$1 pport=$2 sport=$3
  local p="$DEMO_DIR/pg/$set-db1" s="$DEMO_DIR/pg/$set-db2"
  local psock="$DEMO_DIR/sock/$set-db1" ssock="$DEMO_DIR/sock/$set-db2"
  mkdir -p "$psock" "$ssock"
  chown "$OS_USER" "$psock" "$ssock" "$DEMO_DIR/pg" "$DEMO_DIR/logs"
  say "set $set: primary (initdb --data-checksums) on socket $psock port $pport"
  as_pg "$PGBIN/initdb" -D "$p" --data-checksums -A trust -U postgres --locale=C -E UTF8 >"$DEMO_DIR/logs/initdb-$set.log"
  cat >>"$p/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$psock'
port = $pport
wal_level = replica
max_wal_senders = 10
wal_keep_size = '256MB'
shared_buffers = '32MB'
cluster_name = '$set-db1'
EOF
  as_pg "$PGBIN/pg_ctl" start -w -D "$p" -l "$DEMO_DIR/logs/pg-$set-db1.log" >/dev/null
  as_pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h "$psock" -p "$pport" -U postgres postgres >/dev/null 2>&1
  say "set $set: standby (pg_basebackup -R) on socket $ssock port $sport"
  as_pg "$PGBIN/pg_basebackup" -D "$s" -R -X stream -c fast -h "$psock" -p "$pport" -U postgres
  cat >>"$s/postgresql.conf" <<EOF
unix_socket_directories = '$ssock'
port = $sport
cluster_name = '$set-db2'
EOF
  as_pg "$PGBIN/pg_ctl" start -w -D "$s" -l "$DEMO_DIR/logs/pg-$set-db2.log" >/dev/null
}

write_agent_config() {
  local set=$1 member=$2 port=$3 pgport=$4   # $5: metrics port
  local name="$set-$member" home="$DEMO_DIR/agents/$set-$member"
  mkdir -p "$home/home" "$home/archive"
  chown "$OS_USER" "$home/archive"
  cat >"$home/agent.toml" <<EOF
name = "$name"
set = "$set"
member = "$member"
listen = "127.0.0.1:$port"
controller = "https://127.0.0.1:$BASE_PORT"
home = "$home/home"
heartbeat_interval = "1s"
metrics_listen = "127.0.0.1:$5"

[tls]
ca = "$DEMO_DIR/certs/ca.pem"
cert = "$DEMO_DIR/certs/agent-$name.pem"
key = "$DEMO_DIR/certs/agent-$name-key.pem"

[postgres]
data_dir = "$DEMO_DIR/pg/$name"
bin_dir = "$PGBIN"
os_user = "$OS_USER"
socket_dir = "$DEMO_DIR/sock/$name"
port = $pgport
archive_dir = "$home/archive"

[backup]
dir = "$home/backups"
wal_archive = "$DEMO_DIR/wal/$set"
EOF
}

# Firebird: a tool with the private server's root and SYSDBA's password, as
# the server's OS user.
as_fb() {
  local pw; pw=$(cat "$DEMO_DIR/fb/sysdba.password")
  if [ "$(id -u)" = 0 ]; then
    (cd / && FIREBIRD="$DEMO_DIR/fb/root" ISC_USER=SYSDBA ISC_PASSWORD="$pw" LC_ALL=C \
      setpriv --reuid="$FB_USER" --regid="$FB_USER" --init-groups -- "$@")
  else
    FIREBIRD="$DEMO_DIR/fb/root" ISC_USER=SYSDBA ISC_PASSWORD="$pw" LC_ALL=C "$@"
  fi
}

# The set's database on a private Firebird 3 server (its own root, port,
# security database and lock directory; the package's service is left
# alone), with a small billing schema: clients, accounts, payments, a
# generator per table filled by a trigger.
make_firebird() {
  local fb="$DEMO_DIR/fb"
  local db="$fb/data/$FB_SET.fdb" dsn="127.0.0.1/$FB_PORT:$fb/data/$FB_SET.fdb"
  [ -f "$FB_SECURITY" ] || die "$FB_SECURITY is missing: reinstall firebird3.0-server"
  mkdir -p "$fb"/{root,data,lock}
  for l in intl lib plugins UDF firebird.msg; do ln -sfn "$FB_PKG_ROOT/$l" "$fb/root/$l"; done
  cp "$FB_PKG_ROOT/plugins.conf" "$fb/root/plugins.conf"
  : >"$fb/root/databases.conf"
  cp "$FB_SECURITY" "$fb/security3.fdb"
  cat >"$fb/root/firebird.conf" <<EOF
RemoteServicePort = $FB_PORT
RemoteBindAddress = 127.0.0.1
SecurityDatabase = $fb/security3.fdb
AuthServer = Srp
AuthClient = Srp
UserManager = Srp
WireCrypt = Enabled
EOF
  (umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$fb/sysdba.password"; echo >>"$fb/sysdba.password")
  chown -R "$FB_USER" "$fb"
  say "set $FB_SET: a private Firebird 3 server on 127.0.0.1:$FB_PORT"
  # Embedded, before the server runs: the OS user is trusted.
  printf "create or alter user SYSDBA password '%s' using plugin Srp;\ncommit;\n" "$(head -n 1 "$fb/sysdba.password")" |
    as_fb env -u ISC_PASSWORD FIREBIRD_LOCK="$fb/lock" isql-fb -q -b "$fb/security3.fdb" >/dev/null
  if [ "$(id -u)" = 0 ]; then
    start_daemon "firebird-$FB_SET" env FIREBIRD="$fb/root" FIREBIRD_LOCK="$fb/lock" \
      setpriv --reuid="$FB_USER" --regid="$FB_USER" --init-groups -- /usr/sbin/firebird
  else
    start_daemon "firebird-$FB_SET" env FIREBIRD="$fb/root" FIREBIRD_LOCK="$fb/lock" /usr/sbin/firebird
  fi
  local i
  for i in $(seq 1 100); do
    if echo 'select 1 from rdb$database;' | as_fb isql-fb -q -b "127.0.0.1/$FB_PORT:$fb/security3.fdb" >/dev/null 2>&1; then break; fi
    alive "$DEMO_DIR/run/firebird-$FB_SET.pid" || die "the Firebird server exited; see $DEMO_DIR/logs/firebird-$FB_SET.log"
    [ "$i" = 100 ] && die "the Firebird server did not answer on 127.0.0.1:$FB_PORT within 30 s; see $DEMO_DIR/logs/firebird-$FB_SET.log"
    sleep 0.3
  done
  say "set $FB_SET: database $db (clients, accounts, payments)"
  as_fb isql-fb -q -b >/dev/null <<EOF
create database '$dsn' page_size 8192 default character set utf8;
commit;
EOF
  as_fb isql-fb -q -b "$dsn" >"$DEMO_DIR/logs/firebird-schema.log" <<'EOF'
create table clients (id bigint not null primary key, name varchar(100) not null, created_at timestamp default current_timestamp not null);
create table accounts (id bigint not null primary key, client_id bigint not null references clients (id), balance numeric(18,2) default 0 not null);
create table payments (id bigint not null primary key, account_id bigint not null references accounts (id), amount numeric(18,2) not null, paid_at timestamp default current_timestamp not null, note varchar(200));
create index payments_paid_at on payments (paid_at);
create sequence gen_clients;
create sequence gen_accounts;
create sequence gen_payments;
commit;
set term ^;
create trigger clients_id for clients before insert as begin if (new.id is null) then new.id = next value for gen_clients; end^
create trigger accounts_id for accounts before insert as begin if (new.id is null) then new.id = next value for gen_accounts; end^
create trigger payments_id for payments before insert as begin if (new.id is null) then new.id = next value for gen_payments; end^
set term ;^
commit;
insert into clients (name) select 'client ' || r.rdb$type from rdb$types r rows 50;
insert into accounts (client_id, balance) select id, 100 from clients;
insert into payments (account_id, amount, note) select a.id, mod(a.id * 37 + r.rdb$type, 500) + 0.5, 'invoice ' || r.rdb$type from accounts a cross join rdb$types r rows 5000;
commit;
EOF
}

write_firebird_agent_config() {
  local port=$1 mport=$2 fb="$DEMO_DIR/fb"
  local home="$DEMO_DIR/agents/$FB_MEMBER"
  mkdir -p "$home/home"
  cat >"$home/agent.toml" <<EOF
name = "$FB_MEMBER"
set = "$FB_SET"
engine = "firebird"
listen = "127.0.0.1:$port"
controller = "https://127.0.0.1:$BASE_PORT"
home = "$home/home"
heartbeat_interval = "1s"
metrics_listen = "127.0.0.1:$mport"

[tls]
ca = "$DEMO_DIR/certs/ca.pem"
cert = "$DEMO_DIR/certs/agent-$FB_MEMBER.pem"
key = "$DEMO_DIR/certs/agent-$FB_MEMBER-key.pem"

[firebird]
database = "$fb/data/$FB_SET.fdb"
host = "127.0.0.1"
port = $FB_PORT
password_file = "$fb/sysdba.password"
root_dir = "$fb/root"
os_user = "$FB_USER"
archive_dir = "$home/archive"
# Filled by triggers: a restore sets them to their column's maximum.
generators = { GEN_CLIENTS = "CLIENTS.ID", GEN_ACCOUNTS = "ACCOUNTS.ID", GEN_PAYMENTS = "PAYMENTS.ID" }

[testdb]
mode = "online"

[backup]
dir = "$home/backups"
EOF
}

start_daemon() {
  local name=$1; shift
  nohup "$@" >>"$DEMO_DIR/logs/$name.log" 2>&1 &
  echo $! >"$DEMO_DIR/run/$name.pid"
}

up() {
  install_postgres
  install_firebird
  PGBIN=$(pg_bin)
  build
  if all_running; then
    say "demo already running in $DEMO_DIR"
    status
    main_job
    return
  fi
  if [ -e "$DEMO_DIR" ]; then
    say "a partial demo is in $DEMO_DIR; removing it first"
    down
  fi
  for p in $(seq "$BASE_PORT" $((BASE_PORT + NPORTS - 1))); do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; set TANDEM_DEMO_PORT to a free range of $NPORTS ports"
  done
  for p in $(seq "$METRICS_PORT" $((METRICS_PORT + NPORTS - 1))); do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; set TANDEM_DEMO_METRICS_PORT to a free range of $NPORTS ports"
  done
  if [ "$FIREBIRD" = 1 ]; then
    port_free "$FB_PORT" || die "port $FB_PORT on 127.0.0.1 is in use; set TANDEM_DEMO_FIREBIRD_PORT to a free port"
  fi
  mkdir -p "$DEMO_DIR"/{pg,sock,logs,run,agents}
  chmod 755 "$DEMO_DIR"

  local pgport=5433 agents=()
  for set in "${SETS[@]}"; do
    make_set "$set" "$pgport" $((pgport + 1))
    pgport=$((pgport + 2))
    for m in "${MEMBERS[@]}"; do agents+=("$set-$m"); done
  done
  if [ "$FIREBIRD" = 1 ]; then
    make_firebird
    agents+=("$FB_MEMBER")
  fi
  say "certificates (tandemctl certs init)"
  ctl certs init --dir "$DEMO_DIR/certs" --agents "$(IFS=,; echo "${agents[*]}")" --users operator,admin >/dev/null

  {
    echo "listen = \"127.0.0.1:$BASE_PORT\""
    echo "store = \"$DEMO_DIR/controller.db\""
    echo 'heartbeat_interval = "1s"'
    echo 'offline_after = "5s"'
    echo 'time_zone = "UTC"'
    echo "metrics_listen = \"127.0.0.1:$METRICS_PORT\""
    echo
    echo '# Both sets live on this one host: let their tests run side by side.'
    echo '[limits]'
    echo 'fleet = 2'
    echo 'per_host = 2'
    echo
    echo '[access]'
    echo 'default_role = "viewer"'
    echo 'users = { operator = "operator", admin = "admin" }'
    echo
    echo '[tls]'
    echo "ca = \"$DEMO_DIR/certs/ca.pem\""
    echo "cert = \"$DEMO_DIR/certs/controller.pem\""
    echo "key = \"$DEMO_DIR/certs/controller-key.pem\""
    for set in "${SETS[@]}"; do
      echo
      echo '[[sets]]'
      echo "name = \"$set\""
      echo "members = [{ name = \"db1\", agent = \"$set-db1\" }, { name = \"db2\", agent = \"$set-db2\" }]"
    done
    if [ "$FIREBIRD" = 1 ]; then
      echo
      echo '# One Firebird 3 database: no physical replication, one member.'
      echo '[[sets]]'
      echo "name = \"$FB_SET\""
      echo "members = [{ name = \"$FB_MEMBER\", agent = \"$FB_MEMBER\" }]"
    fi
  } >"$DEMO_DIR/controller.toml"

  local env="$DEMO_DIR/env"
  {
    echo "# source me: . $env"
    echo "export TANDEM_CONTROLLER=https://127.0.0.1:$BASE_PORT"
    echo "export TANDEM_CA=$DEMO_DIR/certs/ca.pem"
    echo "export TANDEM_CERT=$DEMO_DIR/certs/user-operator.pem"
    echo "export TANDEM_KEY=$DEMO_DIR/certs/user-operator-key.pem"
    echo "export PATH=$BIN:\$PATH"
    local urls="" p
    for p in $(seq "$METRICS_PORT" $((METRICS_PORT + NPORTS - 1))); do urls="$urls http://127.0.0.1:$p/metrics"; done
    echo "# Prometheus metrics: the controller's, then each agent's"
    echo "export TANDEM_DEMO_METRICS_URLS=\"${urls# }\""
  } >"$env"

  say "starting tandem-controller on 127.0.0.1:$BASE_PORT"
  start_daemon controller "$BIN/tandem-controller" --config "$DEMO_DIR/controller.toml"
  local port=$((BASE_PORT + 1)) pgport=5433 mport=$((METRICS_PORT + 1))
  for set in "${SETS[@]}"; do
    for m in "${MEMBERS[@]}"; do
      write_agent_config "$set" "$m" "$port" "$pgport" "$mport"
      local up_set up_m
      up_set=$(echo "$set" | tr '[:lower:]' '[:upper:]' | tr -c 'A-Z0-9\n' '_')
      up_m=$(echo "$m" | tr '[:lower:]' '[:upper:]' | tr -c 'A-Z0-9\n' '_')
      {
        echo "export TANDEM_DEMO_${up_set}_${up_m}_PGHOST=$DEMO_DIR/sock/$set-$m"
        echo "export TANDEM_DEMO_${up_set}_${up_m}_PGPORT=$pgport"
        echo "export TANDEM_DEMO_${up_set}_${up_m}_PGDATA=$DEMO_DIR/pg/$set-$m"
      } >>"$env"
      say "starting tandem-agent $set-$m on 127.0.0.1:$port"
      start_daemon "agent-$set-$m" "$BIN/tandem-agent" --config "$DEMO_DIR/agents/$set-$m/agent.toml"
      port=$((port + 1)); pgport=$((pgport + 1)); mport=$((mport + 1))
    done
  done
  if [ "$FIREBIRD" = 1 ]; then
    write_firebird_agent_config "$port" "$mport"
    {
      echo "# Firebird: FIREBIRD=\$TANDEM_DEMO_CARBON_FIREBIRD ISC_USER=SYSDBA ISC_PASSWORD=\$(cat \$TANDEM_DEMO_CARBON_PASSWORD_FILE) isql-fb \$TANDEM_DEMO_CARBON_DSN"
      echo "export TANDEM_DEMO_CARBON_DSN=127.0.0.1/$FB_PORT:$DEMO_DIR/fb/data/$FB_SET.fdb"
      echo "export TANDEM_DEMO_CARBON_FIREBIRD=$DEMO_DIR/fb/root"
      echo "export TANDEM_DEMO_CARBON_PASSWORD_FILE=$DEMO_DIR/fb/sysdba.password"
    } >>"$env"
    say "starting tandem-agent $FB_MEMBER (Firebird) on 127.0.0.1:$port"
    start_daemon "agent-$FB_MEMBER" "$BIN/tandem-agent" --config "$DEMO_DIR/agents/$FB_MEMBER/agent.toml"
  fi

  # shellcheck disable=SC1090
  . "$env"
  local n=four
  [ "$FIREBIRD" = 1 ] && n=five
  say "waiting for the $n agents to register"
  local i
  for i in $(seq 1 120); do
    if ctl agents >/dev/null 2>&1; then break; fi
    alive "$DEMO_DIR/run/controller.pid" || die "tandem-controller exited; see $DEMO_DIR/logs/controller.log"
    [ "$i" = 120 ] && die "agents did not all come online within 60 s; see $DEMO_DIR/logs/"
    sleep 0.5
  done
  status
  main_job
  cat >&2 <<EOF

Demo is up. Next:
  . $env
  tandemctl show                 # sets, members, roles, verdicts
  tandemctl testdb billing       # test one set again
  tandemctl history billing      # its verdicts and events
  tandemctl set list             # the inventory: sets, members, agents, generations
  TANDEM_CERT=$DEMO_DIR/certs/user-admin.pem TANDEM_KEY=$DEMO_DIR/certs/user-admin-key.pem \\
    tandemctl set policy crm --test interval=600   # test crm every 10 min after the last test
  tandemctl agents --output json
  curl -s \${TANDEM_DEMO_METRICS_URLS%% *}   # the controller's Prometheus metrics
  psql -h \$TANDEM_DEMO_BILLING_DB1_PGHOST -p \$TANDEM_DEMO_BILLING_DB1_PGPORT -U postgres
  deploy/demo.sh down            # stop and remove everything
EOF
  if [ "$FIREBIRD" = 1 ]; then
    cat >&2 <<EOF
Firebird (set $FB_SET, member $FB_MEMBER; README "A five-minute tour"):
  tandemctl testdb $FB_SET        # nbackup -L, copy, nbackup -N; gfix -v -full, gbak -b, lost rows
  tandemctl backup $FB_SET        # gbak -b of the copy, restored by gbak -c and validated, then kept
  tandemctl backups $FB_SET
  FIREBIRD=\$TANDEM_DEMO_CARBON_FIREBIRD ISC_USER=SYSDBA ISC_PASSWORD=\$(cat \$TANDEM_DEMO_CARBON_PASSWORD_FILE) \\
    isql-fb \$TANDEM_DEMO_CARBON_DSN   # the database, through the private server
EOF
  fi
}

# The demo's main job: test every set's standby and print the verdicts.
main_job() {
  say "the main job: tandemctl testdb --all"
  local rc=0
  ctl testdb --all || rc=$?
  case $rc in
    0) say "every set is clean" ;;
    1) say "errors found: the sets above need a repair on the primary with the whole set halted" ;;
    *) die "tandemctl testdb --all could not run every test (exit $rc); see $DEMO_DIR/logs/" ;;
  esac
}

status() {
  [ -f "$DEMO_DIR/env" ] || die "no demo in $DEMO_DIR; run deploy/demo.sh up"
  # shellcheck disable=SC1090
  . "$DEMO_DIR/env"
  ctl show
}

down() {
  [ -e "$DEMO_DIR" ] || { say "no demo in $DEMO_DIR"; return; }
  PGBIN=${PGBIN:-$(pg_bin)}
  local f
  for f in "$DEMO_DIR"/run/*.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$DEMO_DIR"/run/*.pid; do
    [ -f "$f" ] || continue
    for _ in $(seq 1 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  for d in "$DEMO_DIR"/pg/*/; do
    [ -f "$d/PG_VERSION" ] || continue
    as_pg "$PGBIN/pg_ctl" stop -m fast -w -D "$d" >/dev/null 2>&1 || true
  done
  rm -rf "$DEMO_DIR"
  say "demo stopped and $DEMO_DIR removed"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) PGBIN=$(pg_bin); status ;;
  -h|--help|help|"") sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] ;;
  *) die "unknown command '$1'; use up, status or down" ;;
esac
