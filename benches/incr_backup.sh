#!/usr/bin/env bash
# incr_backup.sh - what a full and then an incremental backup store and take,
# pgwal next to pgBackRest, on the same cluster and the same changes.
#
# One pgbench cluster of scale SCALE (filler = md5(aid), rewritten), archiving
# into both repositories at once (archive_command runs both tools). Then, timed:
# a pgBackRest full, a pgwal full, the change workload (pgbench -n -t TX, not
# timed), a pgBackRest incr, a pgwal incr. Both incrs see the same changes.
# Prints per tool and type: wall seconds and repository growth during the
# backup. pgBackRest 2.45 compares files (a changed file is stored whole);
# pgwal compares 8 KiB pages by content. The pgwal incr is then restored,
# recovered (immediate, promote) and its row count checked.
#
# Env: SCALE (30), TX (2000 transactions per client, 2 clients), PGWAL_BIN
# (required), BACKUP_PORT (55402), VERIFY_PORT (55403), and lib.sh's.
# Usage: PGWAL_BIN=$PWD/target/release/pgwal bash benches/incr_backup.sh
set -euo pipefail
BENCH_LIB=${BENCH_LIB:-$(dirname "$0")/../../shared/bench/lib.sh}
[[ -r $BENCH_LIB ]] || BENCH_LIB=/work/shared/bench/lib.sh
. "$BENCH_LIB"
bench_drop_root "$0" "$@"

SCALE=${SCALE:-30}
TX=${TX:-2000}
BACKUP_PORT=${BACKUP_PORT:-55402}
VERIFY_PORT=${VERIFY_PORT:-55403}
[[ -n ${PGWAL_BIN:-} && -x $PGWAL_BIN ]] || die "set PGWAL_BIN to a pgwal executable"
W=$BENCH_WORK/incr
DATA=$W/pgdata
RDIR=$W/restore
PB="$PGBACKREST"
mkdir -p "$W"
trap 'pg_stop_all' EXIT

PGBR_REPO=$W/repo/pgbr
PGWAL_DIR=$W/repo/pgwal
CONF=$W/pgbackrest.conf
PGBR_STANZA_EXTRA="pg1-port=$BACKUP_PORT pg1-socket-path=$SOCKDIR pg1-user=postgres" \
  pgbr_write_conf "$CONF" "$PGBR_REPO" "$DATA" "$W/pgbr" \
  "process-max=$PGBR_PROCESS_MAX" "start-fast=y" "repo1-retention-full=99" "archive-timeout=600"
pg_stop "$RDIR"; pg_stop "$DATA"
wipe_owned_dir "$PGBR_REPO"; wipe_owned_dir "$PGWAL_DIR"; rm -rf "$DATA" "$RDIR"
rm -rf "$W/pgbr"; mkdir -p "$W/pgbr/lock" "$W/pgbr/log" "$W/pgbr/spool"
export PGWAL_REPO=file://$PGWAL_DIR PGDATA=$DATA PGHOST=$SOCKDIR PGPORT=$BACKUP_PORT PGUSER=postgres
log "initdb $DATA (port $BACKUP_PORT), pgbench -i -s $SCALE"
pg_create "$DATA" "$BACKUP_PORT" \
  "$PB --config=$CONF --stanza=$PGBR_STANZA archive-push %p && PGWAL_REPO=$PGWAL_REPO $PGWAL_BIN archive %p" \
  "shared_buffers = 512MB" "max_wal_size = 4GB" "checkpoint_timeout = 30min"
pg_start "$DATA"
# The stanza first: archive-push fails without it, and PostgreSQL then backs off.
$PB --config="$CONF" --stanza="$PGBR_STANZA" stanza-create >/dev/null
pgbench -i -q -s "$SCALE" -h "$SOCKDIR" -p "$BACKUP_PORT" -U postgres postgres 2>&1 | tail -1 >&2
bench_psql "$BACKUP_PORT" -c "UPDATE pgbench_accounts SET filler = md5(aid::text)" -c "VACUUM FULL ANALYZE pgbench_accounts"
bench_sql "$BACKUP_PORT" "CHECKPOINT" >/dev/null
# Neither backup is to wait for the load's WAL backlog: let the archiver catch up first.
LAST=$(bench_sql "$BACKUP_PORT" "SELECT pg_walfile_name(pg_switch_wal())")
log "waiting for the archiver to reach $LAST"
for _ in $(seq 1200); do
  [[ $(bench_sql "$BACKUP_PORT" "SELECT coalesce(last_archived_wal, '') >= '$LAST' FROM pg_stat_archiver") == t ]] && break
  sleep 0.5
done
DATA_BYTES=$(du -s --block-size=1 --apparent-size --exclude=pg_wal "$DATA" | cut -f1)

RES=$(bench_results_dir)/incr_backup.$(date +%Y%m%d-%H%M%S).tsv
printf 'tool\ttype\twall_s\trepo_bytes\n' > "$RES"
echo "# incr_backup: pgbench scale $SCALE, data dir $DATA_BYTES B without pg_wal; changes: pgbench -n -t $TX -c 2"
echo "# $($PB version) process-max=$PGBR_PROCESS_MAX compress-type=$PGBR_COMPRESS level $PGBR_LEVEL; $("$PGWAL_BIN" --version); $(nproc) CPUs"
printf '%-8s %-5s %8s %14s\n' tool type wall_s repo_bytes
step() {  # step TOOL TYPE REPO_DIR cmd...
  local tool=$1 type=$2 dir=$3 s e before; shift 3
  before=$(dir_bytes "$dir"); s=${EPOCHREALTIME/./}
  "$@" >> "$W/commands.log" 2>&1 || { tail -20 "$W/commands.log" >&2; die "'$*' failed"; }
  e=${EPOCHREALTIME/./}
  local wall; wall=$(awk -v u=$((e - s)) 'BEGIN{printf "%.2f", u/1e6}')
  local grew=$(( $(dir_bytes "$dir") - before ))
  printf '%s\t%s\t%s\t%s\n' "$tool" "$type" "$wall" "$grew" >> "$RES"
  printf '%-8s %-5s %8s %14d\n' "$tool" "$type" "$wall" "$grew"
}
step pgbr full "$PGBR_REPO" $PB --config="$CONF" --stanza="$PGBR_STANZA" --type=full backup
step pgwal full "$PGWAL_DIR" "$PGWAL_BIN" backup --type full
log "changes: pgbench -n -t $TX -c 2"
pgbench -n -t "$TX" -c 2 -h "$SOCKDIR" -p "$BACKUP_PORT" -U postgres postgres >/dev/null 2>&1
step pgbr incr "$PGBR_REPO" $PB --config="$CONF" --stanza="$PGBR_STANZA" --type=incr backup
step pgwal incr "$PGWAL_DIR" "$PGWAL_BIN" backup --type incr
ROWS=$(bench_sql "$BACKUP_PORT" "SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts")

mkdir -m 700 "$RDIR"
"$PGWAL_BIN" restore --target-immediate --target-action promote --target-dir "$RDIR" >> "$W/commands.log" 2>&1
{ echo "port = $VERIFY_PORT"; echo "archive_mode = off"; echo "unix_socket_directories = '$SOCKDIR'"; } >> "$RDIR/postgresql.auto.conf"
pg_start "$RDIR"
for _ in $(seq 600); do [[ $(bench_sql "$VERIFY_PORT" "SELECT pg_is_in_recovery()") == f ]] && break; sleep 0.5; done
GOT=$(bench_sql "$VERIFY_PORT" "SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts")
pg_stop "$RDIR"
[[ $GOT == "$ROWS" ]] || die "the restored pgwal incr has '$GOT', the primary '$ROWS'"
echo "# the pgwal incr restored and recovered: pgbench_accounts '$GOT' as on the primary"
echo "# repo_bytes = repository growth during that backup (WAL archived meanwhile included); per-run rows: $RES"
pg_stop "$DATA"
exit 0
