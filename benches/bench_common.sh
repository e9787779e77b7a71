#!/usr/bin/env bash
# bench_common.sh - helpers shared by benches/recovery.sh and
# benches/sustained_archive.sh (sourced, not run). Modelled on the shared
# harness in ../shared/bench/lib.sh, but self-contained.
#
# Common env: WORK (scratch root, default /var/tmp/pgwal-recovery-bench),
# PG_BIN (/usr/lib/postgresql/15/bin), BENCH_USER (postgres), PGWAL_BIN
# (/var/tmp/pgwal-bin/pgwal; copied into $WORK/bin at start so that a rebuild
# elsewhere cannot change it mid-run), S3S_FS_BIN (s3s-fs; default
# $HOME/.cache/pgwal-tools/s3s-fs/bin/s3s-fs of the invoking user, copied into
# $WORK/bin as well), PORT_BASE (55431: the first of the TCP ports tried for
# PostgreSQL and s3s-fs, all on 127.0.0.1), SCALE (pgbench scale, 20).
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_USER=${BENCH_USER:-postgres}
WORK=${WORK:-/var/tmp/pgwal-recovery-bench}
SOCKDIR=${SOCKDIR:-$WORK/sock}
PORT_BASE=${PORT_BASE:-55431}
SCALE=${SCALE:-20}
PGWAL_BIN=${PGWAL_BIN:-/var/tmp/pgwal-bin/pgwal}
export PATH="$PG_BIN:$PATH:/usr/sbin:/sbin"
export LC_ALL=C

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --------------------------------------------------------------------------
# Started as root: create WORK (owned by BENCH_USER), copy the binaries there
# (/root is not readable by postgres), and re-exec as BENCH_USER with the
# environment. Usage: bench_drop_root "$0" "$@"
# --------------------------------------------------------------------------
bench_drop_root() {
  local self=$1; shift
  if [[ $(id -u) -ne 0 ]]; then
    mkdir -p "$WORK" "$SOCKDIR"
    return 0
  fi
  id "$BENCH_USER" >/dev/null 2>&1 || die "OS user $BENCH_USER does not exist"
  mkdir -p "$WORK/bin" "$SOCKDIR"
  chown "$BENCH_USER:" "$WORK" "$WORK/bin" "$SOCKDIR"
  [[ -x $PGWAL_BIN ]] || die "PGWAL_BIN=$PGWAL_BIN is not executable"
  install -m 0755 -o "$BENCH_USER" "$PGWAL_BIN" "$WORK/bin/pgwal"
  local s3=${S3S_FS_BIN:-$HOME/.cache/pgwal-tools/s3s-fs/bin/s3s-fs}
  if [[ -x $s3 ]]; then install -m 0755 -o "$BENCH_USER" "$s3" "$WORK/bin/s3s-fs"; fi
  if [[ ${S3_DELAY_MS:-0} != 0 || ${S3_TLS:-0} == 1 ]]; then bench_tls_root_setup; fi
  local home; home=$(getent passwd "$BENCH_USER" | cut -d: -f6)
  local -a envs=(); local v
  for v in $(compgen -e); do
    case $v in HOME|USER|LOGNAME|SHELL|MAIL|PWD|OLDPWD|SUDO_*|_) continue ;; esac
    envs+=("$v=${!v}")
  done
  local rc=0
  runuser -u "$BENCH_USER" -- env -i "${envs[@]}" HOME="$home" USER="$BENCH_USER" \
    LOGNAME="$BENCH_USER" BENCH_PGWAL_ORIG="$PGWAL_BIN" PGWAL_BIN="$WORK/bin/pgwal" \
    S3S_FS_BIN="$WORK/bin/s3s-fs" bash "$self" "$@" || rc=$?
  exit "$rc"
}

# The start of every script: drop root (see above), then stop everything it
# started on exit. Usage: bench_begin "$0" "$@"
bench_begin() {
  bench_drop_root "$@"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# --------------------------------------------------------------------------
# ports, processes, cleanup
# --------------------------------------------------------------------------
port_in_use() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
_PORTS_TAKEN=" "
# free_port VAR: sets VAR to the first port from PORT_BASE on that nobody
# listens on and that this script has not handed out yet (not in a $(...):
# the list of ports handed out must survive)
free_port() {
  local -n _fp_var=$1
  local _fp_p
  for (( _fp_p = PORT_BASE; _fp_p < PORT_BASE + 60; _fp_p++ )); do
    [[ $_PORTS_TAKEN == *" $_fp_p "* ]] && continue
    port_in_use "$_fp_p" && continue
    _PORTS_TAKEN+="$_fp_p "; _fp_var=$_fp_p; return 0
  done
  die "no free port in $PORT_BASE..$((PORT_BASE + 59))"
}

declare -a _STARTED_PG=()   # data dirs of clusters we started
declare -a _STARTED_PIDS=() # PIDs of other processes we started (s3s-fs, samplers, pgbench)

bench_cleanup() {
  local d p
  for d in "${_STARTED_PG[@]:-}"; do [[ -n $d ]] && pg_stop "$d"; done
  for p in "${_STARTED_PIDS[@]:-}"; do
    [[ -n $p ]] || continue
    if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
  return 0
}

forget_pid() {
  local p=$1 i
  for i in "${!_STARTED_PIDS[@]}"; do [[ ${_STARTED_PIDS[$i]} == "$p" ]] && unset "_STARTED_PIDS[$i]"; done
  return 0
}

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------
# pg_conf_common: the settings every cluster of these benchmarks gets (the
# primary, and every restored copy, so all recovery variants run alike)
pg_conf_common() {
  local port=$1
  cat <<EOF
# --- pgwal benches ---
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKDIR'
wal_level = replica
full_page_writes = on
wal_compression = off
checkpoint_timeout = 60s
max_wal_size = 512MB
min_wal_size = 80MB
shared_buffers = 128MB
max_wal_senders = 4
logging_collector = off
log_checkpoints = on
log_line_prefix = '%m [%p] '
EOF
}

# pg_init DATADIR PORT: initdb with data checksums and the common settings
pg_init() {
  local data=$1 port=$2
  pg_stop "$data"
  rm -rf "$data" "$data.log"
  mkdir -p "$(dirname "$data")"
  initdb -D "$data" --data-checksums -A trust -U postgres -E UTF8 --no-instructions >/dev/null
  pg_conf_common "$port" >> "$data/postgresql.conf"
}

# pg_set DATADIR 'key = value'...   (appended to postgresql.conf; the last wins)
pg_set() { local data=$1 l; shift; for l in "$@"; do echo "$l" >> "$data/postgresql.conf"; done; }

pg_start() {
  local data=$1
  pg_ctl -D "$data" -l "$data.log" -w -t 600 start >/dev/null || { tail -n 30 "$data.log" >&2; die "cannot start $data"; }
  _STARTED_PG+=("$data")
}

pg_stop() {
  local data=$1
  if [[ -f $data/postmaster.pid ]] && pg_ctl -D "$data" status >/dev/null 2>&1; then
    pg_ctl -D "$data" -w -t 600 -m fast stop >/dev/null || true
  fi
}

# psql against our socket dir: bpsql PORT [args], bsql PORT SQL
bpsql() { local port=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$port" -U postgres -d postgres "$@"; }
bsql() { local port=$1; shift; bpsql "$port" -At -c "$*"; }

# pgbench_load PORT: pgbench -i -s SCALE, then a filler that does not
# compress trivially (md5(aid), as the shared harness does), VACUUM FULL
pgbench_load() {
  local port=$1
  pgbench -h "$SOCKDIR" -p "$port" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1 || die "pgbench -i failed"
  bsql "$port" "UPDATE pgbench_accounts SET filler = md5(aid::text)" >/dev/null
  bsql "$port" "VACUUM FULL pgbench_accounts" >/dev/null
  bsql "$port" "CHECKPOINT" >/dev/null
}

# --------------------------------------------------------------------------
# s3s-fs (the S3 test server of the pgwal tests), on 127.0.0.1
# s3_start DIR: starts it with root DIR/root and bucket "bench", sets S3_PORT,
# S3_ENDPOINT, S3_KEY, S3_SECRET, S3_PID
# --------------------------------------------------------------------------
s3_start() {
  local dir=$1 bin=${S3S_FS_BIN:-$WORK/bin/s3s-fs}
  [[ -x $bin ]] || die "s3s-fs not found at $bin (set S3S_FS_BIN)"
  mkdir -p "$dir/root/bench"
  free_port S3_PORT
  S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  S3_KEY=PGWALBENCHKEY$RANDOM
  S3_SECRET=pgwal-bench-secret-$RANDOM$RANDOM
  "$bin" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" --secret-key "$S3_SECRET" \
    "$dir/root" </dev/null >>"$dir/s3s-fs.log" 2>&1 &
  S3_PID=$!
  _STARTED_PIDS+=("$S3_PID")
  local i
  for (( i = 0; i < 300; i++ )); do
    kill -0 "$S3_PID" 2>/dev/null || { cat "$dir/s3s-fs.log" >&2; die "s3s-fs exited"; }
    port_in_use "$S3_PORT" && return 0
    sleep 0.1
  done
  die "s3s-fs did not listen on $S3_PORT within 30 s"
}

s3_stop() {
  local p
  for p in ${S3_PROXY_PIDS:-} ${S3_PID:-}; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    forget_pid "$p"
  done
  S3_PID= S3_PROXY_PIDS=
}

# --------------------------------------------------------------------------
# S3 at real latency: s3s-fs behind benches/s3proxy.py twice, all on
# 127.0.0.1: client -> proxy adding S3_DELAY_MS each way (and S3_RATE_MBIT
# per direction per connection, 0 = unlimited) -> proxy terminating TLS ->
# s3s-fs. A TLS handshake then costs round trips as on a real network, and
# pgBackRest 2.45 (https only) reaches the same server as pgwal.
# Env: S3_DELAY_MS (0: plain s3s-fs, no proxies), S3_RATE_MBIT (0),
# BENCH_TLS_DIR (/var/tmp/pgwal-bench-tls: CA and certificate for 127.0.0.1).
# --------------------------------------------------------------------------
BENCH_TLS_DIR=${BENCH_TLS_DIR:-/var/tmp/pgwal-bench-tls}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# As root, once: a CA and a server certificate for 127.0.0.1 in
# BENCH_TLS_DIR, readable by BENCH_USER, and the CA in the system trust store
# (pgwal verifies the endpoint as it would a real one; pgBackRest 2.45 cannot
# match IP addresses and is configured with repo1-storage-verify-tls=n).
bench_tls_root_setup() {
  local t=$BENCH_TLS_DIR
  mkdir -p "$t"
  if [[ ! -s $t/leaf.pem ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$t/ca.key" -out "$t/ca.pem" -days 3650 \
      -subj "/CN=pgwal benches CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1 || die "cannot make the bench CA"
    openssl req -newkey rsa:2048 -nodes -keyout "$t/leaf.key" -out "$t/leaf.csr" -subj "/CN=127.0.0.1" >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$t/leaf.ext"
    openssl x509 -req -in "$t/leaf.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -out "$t/leaf.pem" \
      -days 3650 -extfile "$t/leaf.ext" >/dev/null 2>&1 || die "cannot make the bench TLS certificate"
  fi
  install -m 644 "$t/ca.pem" /usr/local/share/ca-certificates/pgwal-benches-ca.crt
  update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
  chown -R "$BENCH_USER:" "$t"
  chmod 600 "$t/ca.key"
}

# s3_proxy_start VAR LISTEN_PORT TO_PORT [s3proxy.py options]: starts one
# proxy, waits for its "ready" line, records its PID for s3_stop.
s3_proxy_start() {
  local logf=$1 listen=$2 to=$3; shift 3
  python3 "$BENCH_DIR/s3proxy.py" --listen "127.0.0.1:$listen" --to "127.0.0.1:$to" "$@" </dev/null >"$logf" 2>&1 &
  local pid=$! i
  _STARTED_PIDS+=("$pid"); S3_PROXY_PIDS="${S3_PROXY_PIDS:-} $pid"
  for (( i = 0; i < 100; i++ )); do
    grep -q '^ready' "$logf" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "s3proxy.py exited"; }
    sleep 0.1
  done
  die "s3proxy.py on $listen did not start"
}

# s3_net_start DIR: s3_start DIR, then (S3_DELAY_MS > 0) the TLS and latency
# proxies in front of it; S3_ENDPOINT is then https://127.0.0.1:PORT of the
# latency proxy and S3_CLIENT_PORT that port.
s3_net_start() {
  local dir=$1
  s3_start "$dir"
  S3_CLIENT_PORT=$S3_PORT
  [[ ${S3_DELAY_MS:-0} != 0 ]] || return 0
  [[ -s $BENCH_TLS_DIR/leaf.pem ]] || die "S3_DELAY_MS needs the TLS set-up: run the script as root once"
  local tls_port net_port
  free_port tls_port
  s3_proxy_start "$dir/tls-proxy.log" "$tls_port" "$S3_PORT" --tls-cert "$BENCH_TLS_DIR/leaf.pem" --tls-key "$BENCH_TLS_DIR/leaf.key"
  free_port net_port
  s3_proxy_start "$dir/net-proxy.log" "$net_port" "$tls_port" --delay-ms "$S3_DELAY_MS" --rate-mbit "${S3_RATE_MBIT:-0}"
  S3_ENDPOINT="https://127.0.0.1:$net_port"
  S3_CLIENT_PORT=$net_port
  log "S3 at ${S3_DELAY_MS} ms each way over TLS: :$net_port -> TLS :$tls_port -> s3s-fs :$S3_PORT"
}

# s3_config FILE URL: a pgwal config file (mode 600) for repository URL on s3s-fs
s3_config() {
  local f=$1 url=$2
  ( umask 077
    printf 'repo = "%s"\n\n[s3]\nendpoint = "%s"\nregion = "us-east-1"\naccess_key_id = "%s"\nsecret_access_key = "%s"\nallow_http = true\n' \
      "$url" "$S3_ENDPOINT" "$S3_KEY" "$S3_SECRET" > "$f" )
}

# --------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan";exit}
  if(NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
now_s() { echo "$EPOCHREALTIME"; }
# lsn_to_int X/Y -> bytes
lsn_to_int() { local hi=${1%/*} lo=${1#*/}; echo $(( (16#$hi << 32) + 16#$lo )); }
