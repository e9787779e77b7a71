#!/usr/bin/env bash
# s3_backup.sh - full backup and restore into S3 at real latency against the
# same on local disk, pgwal next to pgBackRest 2.45 on the same S3 server.
#
# Usage (as root or as postgres; as root it re-execs itself as BENCH_USER and
# does the one-time TLS set-up for the proxies):
#   S3_DELAY_MS=10 RUNS=3 bash benches/s3_backup.sh
#   SCALE=10 RUNS=1 VARIANTS="pgwal_file pgwal_s3" bash benches/s3_backup.sh   # quick
#
# Env (besides those of bench_common.sh: WORK, PG_BIN, BENCH_USER, PGWAL_BIN,
# S3S_FS_BIN, PORT_BASE):
#   SCALE         pgbench scale of the one cluster                       [30]
#   RUNS          interleaved runs of every variant; medians print       [3]
#   VARIANTS      pgwal_file pgwal_s3 pgbr_s3 (pgbr_file also exists; with
#                 PGWAL_BIN_BASE, base_file and base_s3 are the same as
#                 pgwal_file and pgwal_s3 with that binary: before/after a
#                 change in one run)
#   PGWAL_BIN_BASE  a second pgwal executable for the base_* variants
#   S3_DELAY_MS   latency each way in front of s3s-fs, over TLS (0: plain
#                 http, no proxies; pgBackRest 2.45 then cannot take part) [10]
#   S3_RATE_MBIT  bandwidth cap per direction per connection, 0 = none   [0]
#   PGBR_LEVEL / PGBR_PROCESS_MAX  pgBackRest zst level and process-max  [3 / 2]
#   VERIFY        1: start every restored cluster and count its rows     [1]
#
# Set-up (not timed): initdb --data-checksums, pgbench -i -s SCALE with
# filler = md5(aid) and VACUUM FULL (as ../shared/bench/backup.sh), archiving
# off during the load. Before each variant's backup the cluster's
# archive_command is switched to that variant's repository (reload,
# pg_switch_wal), so each backup waits for its own tool's archiving only.
#
# A run of a variant, timed separately: a full backup (pgwal backup --type
# full / pgbackrest --type=full backup, start-fast), then a restore of it
# into an empty directory (pgwal restore --target-immediate --target-action
# promote / pgbackrest restore --type=immediate --target-action=promote).
# The restored cluster is then started (archive_mode=off, own port), waited
# for until it is promoted, and its count(*) of pgbench_accounts compared
# with the primary's (not timed). Page cache is not dropped.
#
# Columns (medians of RUNS):
#   wall_s  seconds of the command;  cpu_s  user+sys of the command and the
#   processes below it that were waited for (bash `times`: pgBackRest's local
#   processes are its children; the server's archive_command calls are not
#   counted)
#   repo_MB repository growth during the backup (10^6 bytes; WAL archived
#   meanwhile included)
#   S3/local  pgwal_s3 / pgwal_file (and pgbr_s3 / pgbr_file when both ran)
#   pgwal/pgbr  pgwal_s3 / pgbr_s3
# Per-run rows: $WORK/s3_backup/results/s3_backup-<time>.tsv
set -euo pipefail
S3_DELAY_MS=${S3_DELAY_MS:-10}
# shellcheck source=SCRIPTDIR/bench_common.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

SCALE=${SCALE:-30}
RUNS=${RUNS:-3}
VARIANTS=${VARIANTS:-pgwal_file pgwal_s3 pgbr_s3}
PGBR_LEVEL=${PGBR_LEVEL:-3}
PGBR_PROCESS_MAX=${PGBR_PROCESS_MAX:-2}
PGBACKREST=${PGBACKREST:-pgbackrest}
VERIFY=${VERIFY:-1}

bench_begin "$0" "$@"

B=$WORK/s3_backup
DATA=$B/primary
RDIR=$B/restore
RES_DIR=$B/results
mkdir -p "$B" "$RES_DIR"
CMDLOG=$B/commands.log
: > "$CMDLOG"

for v in $VARIANTS; do
  case $v in
    pgwal_file | pgwal_s3 | pgbr_file) ;;
    base_file | base_s3) [[ -x ${PGWAL_BIN_BASE:-} ]] || die "$v needs PGWAL_BIN_BASE" ;;
    pgbr_s3) [[ $S3_DELAY_MS != 0 ]] || die "pgbr_s3 needs S3_DELAY_MS > 0 (pgBackRest 2.45 speaks only https to S3)" ;;
    *) die "unknown variant $v" ;;
  esac
done

# ------------------------------------------------------------------ set-up
pg_stop "$RDIR"; pg_stop "$DATA"
rm -rf "$B/s3" "$B/repo" "$B/pgbr" "$RDIR"
mkdir -p "$B/repo"
s3_net_start "$B/s3"
S3_REPO_DIR=$B/s3/root/bench

PGWAL_FILE_REPO=$B/repo/pgwal
PGWAL_S3_CONF=$B/pgwal-s3.toml
s3_config "$PGWAL_S3_CONF" "s3://bench/pgwal"
BASE_FILE_REPO=$B/repo/base
BASE_S3_CONF=$B/base-s3.toml
s3_config "$BASE_S3_CONF" "s3://bench/base"
if [[ -n ${PGWAL_BIN_BASE:-} ]]; then
  # a copy, so that a rebuild elsewhere cannot change it mid-run
  BENCH_BASE_ORIG=$PGWAL_BIN_BASE
  install -m 0755 "$PGWAL_BIN_BASE" "$WORK/bin/pgwal-base"; PGWAL_BIN_BASE=$WORK/bin/pgwal-base
fi

free_port PG_PORT
free_port VERIFY_PORT
pg_init "$DATA" "$PG_PORT"
pg_set "$DATA" "archive_mode = on" "archive_command = 'true'" \
  "shared_buffers = 512MB" "max_wal_size = 4GB" "checkpoint_timeout = 30min"
pg_start "$DATA"

# pgbr_conf FILE REPO_KIND: pgBackRest's configuration for repository kind
# file (posix) or s3 (the same server and proxies as pgwal)
pgbr_conf() {
  local f=$1 kind=$2 base=$B/pgbr/$2
  mkdir -p "$base/lock" "$base/log" "$base/spool"
  {
    echo "[global]"
    if [[ $kind == s3 ]]; then
      echo "repo1-type=s3"
      echo "repo1-path=/pgbr"
      echo "repo1-s3-bucket=bench"
      echo "repo1-s3-endpoint=127.0.0.1"
      echo "repo1-storage-port=$S3_CLIENT_PORT"
      echo "repo1-s3-region=us-east-1"
      echo "repo1-s3-key=$S3_KEY"
      echo "repo1-s3-key-secret=$S3_SECRET"
      echo "repo1-s3-uri-style=path"
      echo "repo1-storage-verify-tls=n"
    else
      echo "repo1-type=posix"
      echo "repo1-path=$B/repo/pgbr"
    fi
    echo "compress-type=zst"
    echo "compress-level=$PGBR_LEVEL"
    echo "process-max=$PGBR_PROCESS_MAX"
    echo "start-fast=y"
    echo "repo1-retention-full=99"
    echo "archive-timeout=600"
    echo "lock-path=$base/lock"
    echo "log-path=$base/log"
    echo "spool-path=$base/spool"
    echo "log-level-console=warn"
    echo "log-level-file=info"
    echo
    echo "[bench]"
    echo "pg1-path=$DATA"
    echo "pg1-port=$PG_PORT"
    echo "pg1-socket-path=$SOCKDIR"
    echo "pg1-user=postgres"
  } > "$f"
  chmod 600 "$f"
}
PGBR_FILE_CONF=$B/pgbr-file.conf
PGBR_S3_CONF=$B/pgbr-s3.conf
pgbr_conf "$PGBR_FILE_CONF" file
if [[ $S3_DELAY_MS != 0 ]]; then pgbr_conf "$PGBR_S3_CONF" s3; fi

log "pgbench -i -s $SCALE (filler = md5(aid)), port $PG_PORT"
pgbench_load "$PG_PORT"
bsql "$PG_PORT" "ANALYZE" >/dev/null
ROWS=$(bsql "$PG_PORT" "SELECT count(*) FROM pgbench_accounts")
DATA_BYTES=$(du -s --block-size=1 --apparent-size --exclude=pg_wal "$DATA" | cut -f1)

needs() { [[ " $VARIANTS " == *" $1 "* ]]; }
if needs pgbr_file; then "$PGBACKREST" --config="$PGBR_FILE_CONF" --stanza=bench stanza-create >>"$CMDLOG" 2>&1; fi
if needs pgbr_s3; then "$PGBACKREST" --config="$PGBR_S3_CONF" --stanza=bench stanza-create >>"$CMDLOG" 2>&1; fi

# ------------------------------------------------------------------ variants
pgwal_repo_args() {
  case $1 in
    pgwal_file) echo "--repo file://$PGWAL_FILE_REPO" ;; pgwal_s3) echo "--config $PGWAL_S3_CONF" ;;
    base_file) echo "--repo file://$BASE_FILE_REPO" ;; base_s3) echo "--config $BASE_S3_CONF" ;;
  esac
}
pgwal_bin_of() { [[ $1 == base_* ]] && echo "$PGWAL_BIN_BASE" || echo "$PGWAL_BIN"; }
archive_command_of() {
  case $1 in
    pgwal_* | base_*) echo "$(pgwal_bin_of "$1") $(pgwal_repo_args "$1") archive %p" ;;
    pgbr_file) echo "$PGBACKREST --config=$PGBR_FILE_CONF --stanza=bench archive-push %p" ;;
    pgbr_s3) echo "$PGBACKREST --config=$PGBR_S3_CONF --stanza=bench archive-push %p" ;;
  esac
}
repo_dir_of() {
  case $1 in
    pgwal_file) echo "$PGWAL_FILE_REPO" ;;
    pgwal_s3) echo "$S3_REPO_DIR/pgwal" ;;
    base_file) echo "$BASE_FILE_REPO" ;;
    base_s3) echo "$S3_REPO_DIR/base" ;;
    pgbr_file) echo "$B/repo/pgbr" ;;
    pgbr_s3) echo "$S3_REPO_DIR/pgbr" ;;
  esac
}
pgbr_conf_of() { [[ $1 == pgbr_s3 ]] && echo "$PGBR_S3_CONF" || echo "$PGBR_FILE_CONF"; }

# switch_archiving VARIANT: the primary archives into VARIANT's repository
# from the next segment on (what is still .ready goes there too)
switch_archiving() {
  local cmd; cmd=$(archive_command_of "$1")
  bsql "$PG_PORT" "ALTER SYSTEM SET archive_command = '${cmd//\'/\'\'}'" >/dev/null
  bsql "$PG_PORT" "SELECT pg_reload_conf()" >/dev/null
  bsql "$PG_PORT" "SELECT pg_switch_wal()" >/dev/null
}

do_backup() {
  case $1 in
    pgwal_* | base_*) # shellcheck disable=SC2046
      env -u PGWAL_REPO PGDATA="$DATA" PGHOST="$SOCKDIR" PGPORT="$PG_PORT" PGUSER=postgres \
        "$(pgwal_bin_of "$1")" $(pgwal_repo_args "$1") backup --type full --checkpoint fast ;;
    pgbr_*) "$PGBACKREST" --config="$(pgbr_conf_of "$1")" --stanza=bench --type=full backup ;;
  esac
}
do_restore() {
  case $1 in
    pgwal_* | base_*) # shellcheck disable=SC2046
      env -u PGWAL_REPO "$(pgwal_bin_of "$1")" $(pgwal_repo_args "$1") restore --target-dir "$RDIR" \
        --target-immediate --target-action promote ;;
    pgbr_*)
      local conf label; conf=$(pgbr_conf_of "$1")
      label=$("$PGBACKREST" --config="$conf" --stanza=bench --output=json info | jq -r '.[0].backup[-1].label')
      "$PGBACKREST" --config="$conf" --stanza=bench --pg1-path="$RDIR" --set="$label" \
        --type=immediate --target-action=promote restore ;;
  esac
}

# children_cpu FILE: user+sys seconds of the children this shell has waited
# for, from `times` output saved in FILE (`times` runs in this shell, not in
# a $(...) subshell, which would report its own children)
children_cpu() {
  awk 'NR == 2 { n = split($0, f, " "); s = 0
         for (i = 1; i <= n; i++) { split(f[i], p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] }
         printf "%.3f", s }' "$1"
}

# timed VARIANT OP cmd...: sets T_WALL, T_CPU (user+sys of the command's whole process tree, waited for)
timed() {
  local v=$1 op=$2 s e; shift 2
  sync
  times > "$B/times.0"
  s=$EPOCHREALTIME
  if ! "$@" >>"$CMDLOG" 2>&1; then
    tail -n 20 "$CMDLOG" >&2; die "$v $op failed: $*"
  fi
  e=$EPOCHREALTIME
  times > "$B/times.1"
  T_WALL=$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f", e - s}')
  T_CPU=$(awk -v a="$(children_cpu "$B/times.0")" -v b="$(children_cpu "$B/times.1")" 'BEGIN{printf "%.2f", b - a}')
}

# verify_restore: start the restored cluster, wait for the promotion, count rows
verify_restore() {
  local v=$1 n i
  { echo "port = $VERIFY_PORT"; echo "archive_mode = off"; echo "unix_socket_directories = '$SOCKDIR'"
    echo "listen_addresses = '127.0.0.1'"; } >> "$RDIR/postgresql.auto.conf"
  rm -f "$RDIR/postmaster.pid"
  pg_start "$RDIR"
  for (( i = 0; i < 1200; i++ )); do
    [[ $(bsql "$VERIFY_PORT" "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]] && break
    sleep 0.1
  done
  n=$(bsql "$VERIFY_PORT" "SELECT count(*) FROM pgbench_accounts")
  pg_stop "$RDIR"
  [[ $n == "$ROWS" ]] || die "$v: the restored cluster has $n rows in pgbench_accounts, the primary $ROWS"
}

RES=$RES_DIR/s3_backup-$(date +%Y%m%d-%H%M%S).tsv
printf 'variant\trun\tbackup_wall_s\tbackup_cpu_s\trepo_bytes\trestore_wall_s\trestore_cpu_s\n' > "$RES"
for (( r = 1; r <= RUNS; r++ )); do
  for v in $VARIANTS; do
    switch_archiving "$v"
    dir=$(repo_dir_of "$v"); mkdir -p "$dir"
    before=$(du -s --block-size=1 --apparent-size "$dir" | cut -f1)
    timed "$v" backup do_backup "$v"; bw=$T_WALL bc=$T_CPU
    grew=$(( $(du -s --block-size=1 --apparent-size "$dir" | cut -f1) - before ))
    pg_stop "$RDIR"; rm -rf "$RDIR"; mkdir -m 700 "$RDIR"
    timed "$v" restore do_restore "$v"; rw=$T_WALL rc=$T_CPU
    printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\n' "$v" "$r" "$bw" "$bc" "$grew" "$rw" "$rc" >> "$RES"
    log "$v run $r: backup $bw s (cpu $bc s, +$grew B), restore $rw s (cpu $rc s)"
    if [[ $VERIFY == 1 ]]; then verify_restore "$v"; fi
  done
done
switch_archiving pgwal_file >/dev/null 2>&1 || true

# ------------------------------------------------------------------ report
col() { awk -F'\t' -v v="$1" -v c="$2" 'NR > 1 && $1 == v {print $c}' "$RES" | median; }
echo "# s3_backup: pgbench scale $SCALE (filler md5), data dir $DATA_BYTES B without pg_wal, $ROWS accounts; RUNS=$RUNS"
[[ -z ${PGWAL_BIN_BASE:-} ]] || echo "# base_*: $("$PGWAL_BIN_BASE" --version 2>/dev/null) (${BENCH_BASE_ORIG:-$PGWAL_BIN_BASE})"
echo "# S3: s3s-fs on 127.0.0.1$( [[ $S3_DELAY_MS != 0 ]] && echo " behind TLS and ${S3_DELAY_MS} ms each way (s3proxy.py)" ); $("$PGWAL_BIN" --version 2>/dev/null || echo pgwal) (${BENCH_PGWAL_ORIG:-$PGWAL_BIN}); $("$PGBACKREST" version) process-max=$PGBR_PROCESS_MAX zst $PGBR_LEVEL; $(nproc) CPUs"
printf '%-11s %9s %8s %9s %10s %9s\n' variant backup_s cpu_s repo_MB restore_s cpu_s
for v in $VARIANTS; do
  printf '%-11s %9.2f %8.2f %9.1f %10.2f %9.2f\n' "$v" "$(col "$v" 3)" "$(col "$v" 4)" \
    "$(awk -v b="$(col "$v" 5)" 'BEGIN{print b/1e6}')" "$(col "$v" 6)" "$(col "$v" 7)"
done
ratio() {  # ratio LABEL A B: backup and restore wall of variant A over B
  needs "$2" && needs "$3" || return 0
  printf '%-22s backup %.2fx  restore %.2fx\n' "$1" \
    "$(awk -v a="$(col "$2" 3)" -v b="$(col "$3" 3)" 'BEGIN{print a/b}')" \
    "$(awk -v a="$(col "$2" 6)" -v b="$(col "$3" 6)" 'BEGIN{print a/b}')"
}
ratio "pgwal S3/local" pgwal_s3 pgwal_file
ratio "base S3/local" base_s3 base_file
ratio "pgwal/base on S3" pgwal_s3 base_s3
ratio "pgbr S3/local" pgbr_s3 pgbr_file
ratio "pgwal/pgbr on S3" pgwal_s3 pgbr_s3
[[ $VERIFY == 1 ]] && echo "# every restored cluster started, was promoted and had $ROWS rows in pgbench_accounts"
echo "# wall = seconds of the command; cpu = user+sys of it and its children (bash times); per-run rows: $RES"
pg_stop "$DATA"
exit 0
