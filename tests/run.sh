#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need when it is
# missing (PostgreSQL, Firebird 3, systemd-analyze, docker-compose, promtool, Patroni and etcd from
# the distribution's packages, moto's S3 server from PyPI), then runs
# `cargo fmt --check`, clippy with warnings as errors, and every test: unit
# tests and end-to-end tests against real PostgreSQL and the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

command -v cargo >/dev/null || { echo "tests/run.sh: cargo is not installed; install Rust first" >&2; exit 2; }

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
ls /usr/lib/postgresql/*/bin/pg_amcheck >/dev/null 2>&1 || missing+=(postgresql-client)
# deploy/ is checked with the tools that read it: systemd-analyze verify for
# the units, docker-compose config -q for the compose file, promtool (in
# Debian's prometheus package; its service stays unused) for the alert rules
# and their tests (tests/tests/deploy.rs).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The Patroni test (tests/tests/patroni.rs) runs Debian's Patroni with a local
# etcd; it starts its own on free ports (the packages' services stay unused).
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# The clone-copy test (tests/tests/clone_copy.rs) makes an XFS filesystem
# with reflink on a loop device.
command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || missing+=(xfsprogs)
# The Firebird tests (tests/tests/firebird.rs) start private Firebird 3
# servers (/usr/sbin/firebird) on free ports; the package's own service
# stays unused (Debian's policy-rc.d may even refuse to start it: fine).
[ -x /usr/sbin/firebird ] || missing+=(firebird3.0-server)
command -v gfix >/dev/null 2>&1 && command -v nbackup >/dev/null 2>&1 || missing+=(firebird3.0-utils)
# The remote-store test (tests/tests/restore.rs) runs a local S3 server, moto
# from PyPI, installed into a virtualenv (Debian's python3 refuses pip
# installs outside one).
moto_venv="${TANDEM_MOTO_VENV:-${HOME:-/root}/.cache/tandem/moto-venv}"
[ -x "$moto_venv/bin/moto_server" ] || { command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' 2>/dev/null; } || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "tests/run.sh: running as root needs the 'postgres' OS user (PostgreSQL refuses to run as root); install the postgresql package" >&2
  exit 2
fi

if [ ! -x "$moto_venv/bin/moto_server" ]; then
  say "installing moto[server] (a local S3 server) into $moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q 'moto[server]>=5,<6'
fi
export TANDEM_MOTO_SERVER="$moto_venv/bin/moto_server"

say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
say "build"
cargo build --workspace --all-targets -q
say "tests"
cargo test --workspace -q
