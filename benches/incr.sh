#!/usr/bin/env bash
# incr.sh - block-level incremental backups (issue 11): what a pgwal incr
# stores and costs after a small change to a big table, against pgBackRest's
# file-level incr in the same run, and what restoring the chain costs against
# restoring an equivalent full.
#
# Usage (as root or as postgres; as root it re-execs itself as BENCH_USER):
#   PGWAL_BIN=target/release/pgwal bash benches/incr.sh            # scale 100
#   SCALE=5 TRAFFIC_S=10 PGWAL_BIN=target/debug/pgwal bash benches/incr.sh   # smoke test
#
# Env (besides those of bench_common.sh: WORK, PG_BIN, BENCH_USER, PGWAL_BIN,
# PORT_BASE; SCALE defaults to 100 here):
#   TRAFFIC_S      seconds of pgbench traffic (tpcb-like, 4 clients) after the
#                  1% update, before the incrs                           [60]
#   TRAFFIC_RATE   if set, pgbench --rate (tps) for that traffic [unthrottled]
#   UPDATE_ROWS    rows of the contiguous update (aid X .. X+UPDATE_ROWS);
#                  1% of pgbench_accounts at scale 100                  [100000]
#   FILLER         md5: pgbench_accounts.filler = md5(aid), then VACUUM FULL,
#                  so that data does not compress 20x (as ../shared/bench/backup.sh);
#                  blank: pgbench's own filler                            [md5]
#   PGBR_LEVEL / PGBR_PROCESS_MAX   pgBackRest zst level and process-max [3 / 2]
#   VERIFY         1: start the restored chain (recovery_target immediate) and
#                  compare sum(abalance) with the primary's at the incr  [1]
#   RESTORE_RUNS   restores of each kind, interleaved; the median wall prints [3]
#   INCR_TYPE      the type of pgwal's second backup                      [incr]
#                  (full only to smoke-test the script on a build without incr)
#
# Steps (one primary, archive_command = pgwal archive && pgBackRest
# archive-push, so both repositories get the same WAL):
#   1. initdb --data-checksums, pgbench -i -s SCALE (+ filler), VACUUM
#      (FREEZE, ANALYZE), CHECKPOINT;
#      archiving switched on only after the load (the load's WAL is not
#      needed by any backup); stanza-create.
#   2. full: pgwal backup --type full, pgbackrest backup --type=full.
#   3. UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN X
#      AND X + UPDATE_ROWS (one contiguous range in the middle of the table),
#      then pgbench -T TRAFFIC_S; sum(abalance) recorded.
#   4. incr: pgwal backup --type incr, pgbackrest backup --type=incr.
#   5. pgwal backup --type full right after (full2): the same data as the incr.
#   6. restore (files only, timed without recovery): pgwal restore --backup
#      INCR (reads the chain) and pgwal restore --backup FULL2 into fresh
#      directories, RESTORE_RUNS times each, interleaved (median wall).
# Every backup and restore runs under /usr/bin/time -v: wall, user+sys CPU of
# the command and its children (pgBackRest's local processes included; the
# PostgreSQL server's work is not), peak RSS of the largest process.
# Sizes: stored = the backup's own objects (pgwal: backup/ID/, pgBackRest:
# backup/STANZA/LABEL/), repo_growth = the repository's growth while the
# backup ran (its WAL included), both from `du --apparent-size`.
# Page cache is not dropped. Targets of issue 11 are checked at the end.
set -euo pipefail
SCALE=${SCALE:-100}
WORK=${WORK:-/var/tmp/pgwal-incr-bench}
# shellcheck source=SCRIPTDIR/bench_common.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

TRAFFIC_S=${TRAFFIC_S:-60}
UPDATE_ROWS=${UPDATE_ROWS:-100000}
FILLER=${FILLER:-md5}
PGBR_LEVEL=${PGBR_LEVEL:-3}
PGBR_PROCESS_MAX=${PGBR_PROCESS_MAX:-2}
PGBACKREST=${PGBACKREST:-pgbackrest}
VERIFY=${VERIFY:-1}
RESTORE_RUNS=${RESTORE_RUNS:-3}
INCR_TYPE=${INCR_TYPE:-incr}

bench_begin "$0" "$@"
command -v "$PGBACKREST" >/dev/null || die "pgBackRest ($PGBACKREST) is not installed"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed (apt-get install time)"

W=$WORK/incr
DATA=$W/primary
PGWAL_REPO_DIR=$W/repo_pgwal
PGBR_REPO=$W/repo_pgbr
PGWAL_CONF=$W/pgwal.toml
PGBR_CONF=$W/pgbackrest.conf
STANZA=bench
RES=$W/results
pg_stop "$DATA"; pg_stop "$W/restore_incr"; pg_stop "$W/restore_full"
rm -rf "$W"; mkdir -p "$W" "$RES" "$W/pgbr/lock" "$W/pgbr/log" "$W/pgbr/spool"

PORT=; free_port PORT
VPORT=; free_port VPORT
( umask 077; printf 'repo = "file://%s"\n' "$PGWAL_REPO_DIR" > "$PGWAL_CONF" )
cat > "$PGBR_CONF" <<EOF
[global]
repo1-type=posix
repo1-path=$PGBR_REPO
repo1-retention-full=99
compress-type=zst
compress-level=$PGBR_LEVEL
process-max=$PGBR_PROCESS_MAX
start-fast=y
lock-path=$W/pgbr/lock
log-path=$W/pgbr/log
spool-path=$W/pgbr/spool
log-level-console=warn
log-level-file=info

[$STANZA]
pg1-path=$DATA
pg1-port=$PORT
pg1-socket-path=$SOCKDIR
pg1-user=postgres
EOF

# ------------------------------------------------------------------ setup
log "initdb $DATA (port $PORT), pgbench -i -s $SCALE, filler $FILLER"
pg_init "$DATA" "$PORT"
pg_set "$DATA" "archive_mode = on" "archive_command = '/bin/true'" "shared_buffers = 512MB" \
  "max_wal_size = 4GB" "checkpoint_timeout = 30min"
pg_start "$DATA"
if [[ $FILLER == md5 ]]; then
  pgbench_load "$PORT"
else
  pgbench -h "$SOCKDIR" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1 || die "pgbench -i failed"
  bsql "$PORT" "CHECKPOINT" >/dev/null
fi
# A settled table, as one that has lived for a while: without this,
# autovacuum's first pass over the freshly loaded table (all-visible and hint
# bits on every page) lands between the full and the incr and changes every page.
bsql "$PORT" "VACUUM (FREEZE, ANALYZE)" >/dev/null
bsql "$PORT" "CHECKPOINT" >/dev/null
ARCHIVE="$PGWAL_BIN --config $PGWAL_CONF archive %p && $PGBACKREST --config=$PGBR_CONF --stanza=$STANZA archive-push %p"
bsql "$PORT" "ALTER SYSTEM SET archive_command = '${ARCHIVE//\'/\'\'}'" >/dev/null
bsql "$PORT" "SELECT pg_reload_conf()" >/dev/null
"$PGBACKREST" --config="$PGBR_CONF" --stanza="$STANZA" stanza-create >/dev/null
"$PGBACKREST" --config="$PGBR_CONF" --stanza="$STANZA" check >/dev/null
DATA_BYTES=$(du -s --block-size=1 --apparent-size --exclude=pg_wal "$DATA" | cut -f1)
ACCOUNTS_BYTES=$(bsql "$PORT" "SELECT pg_relation_size('pgbench_accounts')")
export PGHOST=$SOCKDIR PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres

# ------------------------------------------------------------------ measuring
# (archiving goes on meanwhile: a temp file may vanish under du, which then exits 1 but still totals)
dir_bytes() { if [[ -d $1 ]]; then { du -s --block-size=1 --apparent-size "$1" 2>/dev/null || true; } | cut -f1; else echo 0; fi; }

# timed NAME CMD...: runs CMD under /usr/bin/time -v; sets T_WALL, T_CPU
# (user + sys, children included), T_RSS_KB (peak RSS) and T_OUT (stdout)
timed() {
  local name=$1; shift
  sync
  /usr/bin/time -v -o "$RES/$name.time" "$@" > "$RES/$name.out" 2> "$RES/$name.err" ||
    { tail -n 20 "$RES/$name.err" >&2; die "$name: '$*' failed"; }
  T_WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f", s }' "$RES/$name.time")
  T_CPU=$(awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.2f", u + s }' "$RES/$name.time")
  T_RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$RES/$name.time")
  T_OUT=$(cat "$RES/$name.out")
  log "$name: ${T_WALL}s wall, ${T_CPU}s CPU, peak RSS $((T_RSS_KB / 1024)) MiB"
}

declare -A WALL CPU RSS STORED GROWTH IDS
pgbr_label() { "$PGBACKREST" --config="$PGBR_CONF" --stanza="$STANZA" --output=json info | jq -r '.[0].backup[-1].label'; }
# measure_backup NAME REPO_DIR pgwal|pgbr CMD...: one timed backup, its ID and sizes
measure_backup() {
  local name=$1 repo=$2 kind=$3; shift 3
  local before after
  before=$(dir_bytes "$repo")
  timed "$name" "$@"
  after=$(dir_bytes "$repo")
  WALL[$name]=$T_WALL CPU[$name]=$T_CPU RSS[$name]=$T_RSS_KB GROWTH[$name]=$((after - before))
  case $kind in
    pgwal)
      local id; id=$(tr -d '[:space:]' <<<"$T_OUT")
      [[ -d $repo/backup/$id ]] || die "$name: no backup/$id in the pgwal repository (stdout: $T_OUT)"
      STORED[$name]=$(dir_bytes "$repo/backup/$id"); IDS[$name]=$id ;;
    pgbr)
      local label; label=$(pgbr_label)
      STORED[$name]=$(dir_bytes "$repo/backup/$STANZA/$label"); IDS[$name]=$label ;;
  esac
}
# (/usr/bin/time runs programs, not shell functions: these are command prefixes)
PGWAL_BACKUP=("$PGWAL_BIN" --config "$PGWAL_CONF" backup --checkpoint fast --pgdata "$DATA" --type)
PGBR_BACKUP=("$PGBACKREST" --config="$PGBR_CONF" --stanza="$STANZA" backup --type)
PGWAL_RESTORE=("$PGWAL_BIN" --config "$PGWAL_CONF" restore --target-immediate --target-action promote)

log "full backups (pgwal, then pgBackRest)"
measure_backup pgwal_full "$PGWAL_REPO_DIR" pgwal "${PGWAL_BACKUP[@]}" full
measure_backup pgbr_full "$PGBR_REPO" pgbr "${PGBR_BACKUP[@]}" full

ROWS=$(bsql "$PORT" "SELECT count(*) FROM pgbench_accounts")
X=$(( ROWS / 2 ))
log "update aid $X .. $((X + UPDATE_ROWS)) of $ROWS, then pgbench -c 4 -T $TRAFFIC_S"
bsql "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $X AND $((X + UPDATE_ROWS))" >/dev/null
pgbench -h "$SOCKDIR" -p "$PORT" -U postgres -n -c 4 -j 2 -T "$TRAFFIC_S" ${TRAFFIC_RATE:+--rate="$TRAFFIC_RATE"} postgres > "$RES/pgbench.out" 2>&1 ||
  { cat "$RES/pgbench.out" >&2; die "pgbench failed"; }
TPS=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$RES/pgbench.out" | head -n 1)
SUM_AT_INCR=$(bsql "$PORT" "SELECT sum(abalance) FROM pgbench_accounts")

log "incremental backups (pgwal --type $INCR_TYPE, then pgBackRest --type=incr)"
measure_backup pgwal_incr "$PGWAL_REPO_DIR" pgwal "${PGWAL_BACKUP[@]}" "$INCR_TYPE"
measure_backup pgbr_incr "$PGBR_REPO" pgbr "${PGBR_BACKUP[@]}" incr
log "pgwal full right after the incr, for the restore comparison"
measure_backup pgwal_full2 "$PGWAL_REPO_DIR" pgwal "${PGWAL_BACKUP[@]}" full

log "restores, $RESTORE_RUNS of each, interleaved: the chain (${IDS[pgwal_incr]}) and the full (${IDS[pgwal_full2]})"
chain_walls=() full_walls=()
for (( r = 1; r <= RESTORE_RUNS; r++ )); do
  rm -rf "$W/restore_full" "$W/restore_incr"
  timed "restore_full_$r" "${PGWAL_RESTORE[@]}" --backup "${IDS[pgwal_full2]}" --target-dir "$W/restore_full"
  full_walls+=("$T_WALL"); CPU[restore_full]=$T_CPU RSS[restore_full]=$T_RSS_KB
  rm -rf "$W/restore_full"
  timed "restore_chain_$r" "${PGWAL_RESTORE[@]}" --backup "${IDS[pgwal_incr]}" --target-dir "$W/restore_incr"
  chain_walls+=("$T_WALL"); CPU[restore_chain]=$T_CPU RSS[restore_chain]=$T_RSS_KB
done
WALL[restore_chain]=$(printf '%s\n' "${chain_walls[@]}" | median)
WALL[restore_full]=$(printf '%s\n' "${full_walls[@]}" | median)
RESTORED_BYTES=$(du -s --block-size=1 --apparent-size "$W/restore_incr" | cut -f1)

VERIFIED="not checked (VERIFY=0)"
if [[ $VERIFY == 1 ]]; then
  R=$W/restore_incr
  pg_set "$R" "# --- incr.sh ---" "port = $VPORT" "archive_mode = off" "unix_socket_directories = '$SOCKDIR'"
  pg_start "$R"
  for (( i = 0; i < 3000; i++ )); do
    [[ $(bsql "$VPORT" "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]] && break
    sleep 0.2
  done
  got=$(bsql "$VPORT" "SELECT sum(abalance) FROM pgbench_accounts")
  pg_stop "$R"
  [[ $got == "$SUM_AT_INCR" ]] || die "the restored chain has sum(abalance) = $got, the primary had $SUM_AT_INCR"
  VERIFIED="restored chain started; sum(abalance) = $got as on the primary at the incr"
fi
pg_stop "$DATA"
rm -rf "$W/restore_incr"

# ------------------------------------------------------------------ report
mb() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1e6}'; }
echo "# incr.sh: pgbench scale $SCALE (filler $FILLER), data dir $(mb "$DATA_BYTES") MB without pg_wal, pgbench_accounts $(mb "$ACCOUNTS_BYTES") MB ($ROWS rows)"
echo "# change: UPDATE of aid $X..$((X + UPDATE_ROWS)) ($UPDATE_ROWS rows, contiguous) + pgbench -c 4 -T $TRAFFIC_S ${TRAFFIC_RATE:+--rate $TRAFFIC_RATE }($TPS tps)"
echo "# $("$PGWAL_BIN" --version) (${BENCH_PGWAL_ORIG:-$PGWAL_BIN}); $("$PGBACKREST" version) process-max=$PGBR_PROCESS_MAX zst $PGBR_LEVEL; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-13s %-34s %9s %9s %10s %14s %14s\n' backup id wall_s cpu_s rss_MiB stored_bytes repo_growth
for n in pgwal_full pgbr_full pgwal_incr pgbr_incr pgwal_full2; do
  printf '%-13s %-34s %9.2f %9.2f %10d %14d %14d\n' "$n" "${IDS[$n]}" "${WALL[$n]}" "${CPU[$n]}" $((RSS[$n] / 1024)) "${STORED[$n]}" "${GROWTH[$n]}"
done
for n in restore_chain restore_full; do
  printf '%-13s %-34s %9.2f %9.2f %10d %14s %14s\n' "$n" "-> $(mb "$RESTORED_BYTES") MB" "${WALL[$n]}" "${CPU[$n]}" $((RSS[$n] / 1024)) - -
done
echo "# $VERIFIED"
check() {  # check TEXT VALUE OP LIMIT
  local verdict; verdict=$(awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN{ok = (op == "<=") ? v <= l : v < l; print ok ? "met" : "MISSED"}')
  printf '%-52s %10.4f %s %-8s %s\n' "$1" "$2" "$3" "$4" "$verdict"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == 0) print "inf"; else printf "%.4f", a/b }'; }
echo "# targets of issue 11"
check "pgwal incr stored / pgBackRest incr stored" "$(ratio "${STORED[pgwal_incr]}" "${STORED[pgbr_incr]}")" "<=" 0.1
check "pgwal incr stored / pgwal full stored" "$(ratio "${STORED[pgwal_incr]}" "${STORED[pgwal_full]}")" "<" 0.05
check "pgwal incr wall / pgwal full wall" "$(ratio "${WALL[pgwal_incr]}" "${WALL[pgwal_full]}")" "<=" 0.5
check "restore chain wall / restore full wall" "$(ratio "${WALL[restore_chain]}" "${WALL[restore_full]}")" "<=" 1.2
check "pgwal incr peak RSS / pgwal full peak RSS" "$(ratio "${RSS[pgwal_incr]}" "${RSS[pgwal_full]}")" "<=" 1.2
echo "# wall/cpu/rss from /usr/bin/time -v of each command (children included, the server not); stored = the backup's own"
echo "# objects, repo_growth = repository growth during the backup (WAL included); raw output: $RES"
