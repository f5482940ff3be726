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

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 2; }

if [ "$(id -u)" = 0 ]; then OS_USER=postgres; else OS_USER=$(id -un); fi

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

start_daemon() {
  local name=$1; shift
  nohup "$@" >>"$DEMO_DIR/logs/$name.log" 2>&1 &
  echo $! >"$DEMO_DIR/run/$name.pid"
}

up() {
  install_postgres
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
  for p in $(seq "$BASE_PORT" $((BASE_PORT + 4))); do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; set TANDEM_DEMO_PORT to a free range of 5 ports"
  done
  for p in $(seq "$METRICS_PORT" $((METRICS_PORT + 4))); do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; set TANDEM_DEMO_METRICS_PORT to a free range of 5 ports"
  done
  mkdir -p "$DEMO_DIR"/{pg,sock,logs,run,agents}
  chmod 755 "$DEMO_DIR"

  local pgport=5433 agents=()
  for set in "${SETS[@]}"; do
    make_set "$set" "$pgport" $((pgport + 1))
    pgport=$((pgport + 2))
    for m in "${MEMBERS[@]}"; do agents+=("$set-$m"); done
  done
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
    for p in $(seq "$METRICS_PORT" $((METRICS_PORT + 4))); do urls="$urls http://127.0.0.1:$p/metrics"; done
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

  # shellcheck disable=SC1090
  . "$env"
  say "waiting for the four agents to register"
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
  -h|--help|help|"") sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] ;;
  *) die "unknown command '$1'; use up, status or down" ;;
esac
