#!/usr/bin/env bash
# recovery.sh - real recovery time: PostgreSQL replaying a fixed WAL corpus
# from one base backup, with the WAL coming from different places.
#
# Usage (as root or as postgres; as root it re-execs itself as BENCH_USER):
#   bash benches/recovery.sh                              # 64 segments, 3 runs
#   WAL_SEGMENTS=8 RUNS=1 bash benches/recovery.sh        # quick
#   VARIANTS="local pgwal_s3" bash benches/recovery.sh
#
# Env (besides those of bench_common.sh: WORK, PG_BIN, BENCH_USER, PGWAL_BIN,
# S3S_FS_BIN, PORT_BASE, SCALE):
#   WAL_SEGMENTS  full 16 MiB segments of pgbench traffic after the base
#                 backup (64 = 1 GiB)                                   [64]
#   RUNS          timed runs per variant, interleaved; the median prints [3]
#   VARIANTS      local cp pgwal_s3 pgwal_file pgbr_async
#   RECOVERY_DEADLINE  seconds a run may take before it counts as stalled [1800]
#   FORCE=1       rebuild the corpus (primary, base backup, WAL, repositories)
#   PGBR_LEVEL / PGBR_PROCESS_MAX  pgBackRest zst level and process-max [3 / 2]
#   PGWAL_PREFETCH  if set, [fetch] prefetch = N for both pgwal variants
#                 (0 turns prefetching off; default: pgwal's own default)
#   S3_DELAY_MS   > 0: pgwal_s3 reaches s3s-fs the way a client reaches a
#                 real object store, through benches/s3proxy.py terminating
#                 TLS and adding S3_DELAY_MS each way (S3_RATE_MBIT caps each
#                 direction; bench_common.sh s3_net_start; run as root once
#                 for the CA); 0 = plain HTTP on loopback              [0]
#
# Setup (not timed, reused from $WORK/recovery/setup when it matches): a
# primary (initdb --data-checksums, wal_level=replica, full_page_writes=on,
# checkpoint_timeout=60s, max_wal_size=512MB, archive_command = cp into a
# local WAL dir), pgbench -i -s SCALE with filler = md5(aid), pg_basebackup
# -X fetch, pgbench (tpcb-like, 4 clients) until WAL_SEGMENTS full segments
# were archived after the backup, pg_switch_wal, stop. The corpus (backup start
# segment .. last archived segment) is then loaded into each repository:
# `pgwal archive` into file:// and into s3s-fs (127.0.0.1), pgBackRest
# stanza-create + archive-push into a posix repository.
#
# Variants (restore_command; everything else in postgresql.conf is the same):
#   local       the corpus copied into pg_wal before start, restore_command
#               = 'false': the replay-bound lower limit
#   cp          cp WALDIR/%f %p
#   pgwal_s3    pgwal fetch %f %p, repository on s3s-fs (default prefetching;
#               behind TLS and S3_DELAY_MS each way when that is set)
#   pgwal_file  pgwal fetch %f %p, file:// repository
#   pgbr_async  pgbackrest archive-get, archive-async=y, process-max=2, zst 3,
#               posix repository (pgBackRest 2.45 cannot talk plain HTTP to
#               s3s-fs, so it reads from local disk here: an advantage for it)
#
# A timed run: copy the base backup into a fresh data dir, write
# recovery.signal (no recovery target: replay all archived WAL, then end
# recovery, which includes PostgreSQL's end-of-recovery checkpoint), `sync`,
# then time from `pg_ctl start` until the log says "database system is ready
# to accept connections" (polled every 20 ms, deadline RECOVERY_DEADLINE);
# then check pg_is_in_recovery() = f, the "redo done at" LSN (must be the
# same for every run of every variant) and count(*) of pgbench_history
# against the primary's final count. Page cache is not dropped.
#
# Columns:
#   variant   as above
#   runs      timed runs
#   wall_s    median seconds from pg_ctl start to end of recovery
#   min_s / max_s  fastest and slowest run
#   seg_s     corpus segments / wall_s
#   MB_s      WAL replayed (redo done LSN - backup start LSN, 10^6 bytes) / wall_s
#   vs_local  wall_s / wall_s of local (1.00 = as fast as WAL on local disk)
# Per-run rows: $WORK/recovery/results/recovery-<time>.tsv
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench_common.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

WAL_SEGMENTS=${WAL_SEGMENTS:-64}
RUNS=${RUNS:-3}
VARIANTS=${VARIANTS:-local cp pgwal_s3 pgwal_file pgbr_async}
RECOVERY_DEADLINE=${RECOVERY_DEADLINE:-1800}
PGBR_LEVEL=${PGBR_LEVEL:-3}
PGBR_PROCESS_MAX=${PGBR_PROCESS_MAX:-2}
PGBACKREST=${PGBACKREST:-pgbackrest}

bench_begin "$0" "$@"

R=$WORK/recovery
SETUP=$R/setup
PRIMARY=$SETUP/primary
WALDIR=$SETUP/wal
BASE=$SETUP/base
RUN=$R/run
RDATA=$RUN/data
mkdir -p "$R" "$R/results"

# ------------------------------------------------------------------ setup
setup_key="WAL_SEGMENTS=$WAL_SEGMENTS SCALE=$SCALE"
build_corpus() {
  log "building the corpus: $setup_key"
  pg_stop "$PRIMARY"
  rm -rf "$SETUP"; mkdir -p "$SETUP" "$WALDIR"
  local port; free_port port
  pg_init "$PRIMARY" "$port"
  pg_set "$PRIMARY" "archive_mode = on" "archive_command = 'cp %p $WALDIR/%f'"
  pg_start "$PRIMARY"
  log "pgbench -i -s $SCALE (filler = md5(aid))"
  pgbench_load "$port"
  log "pg_basebackup -X fetch"
  pg_basebackup -h "$SOCKDIR" -p "$port" -U postgres -D "$BASE" -X fetch -c fast --no-sync
  sync
  local first; first=$(sed -n 's/^START WAL LOCATION: .*(file \([0-9A-F]\{24\}\)).*/\1/p' "$BASE/backup_label")
  [[ -n $first ]] || die "no START WAL LOCATION in backup_label"
  local cur; cur=$(bsql "$port" "SELECT pg_walfile_name(pg_current_wal_lsn())")
  log "backup starts in $first; pgbench until $WAL_SEGMENTS segments after $cur are archived"
  local n=0 t=${CHUNK_S:-10}
  while :; do
    n=$(find "$WALDIR" -maxdepth 1 -name '0*' -newer "$BASE/backup_label" -printf '%f\n' |
        awk -v c="$cur" 'length($0)==24 && $0 > c' | wc -l)
    (( n >= WAL_SEGMENTS )) && break
    pgbench -h "$SOCKDIR" -p "$port" -U postgres -c 4 -j 2 -T "$t" -n postgres >/dev/null 2>&1 ||
      die "pgbench failed"
  done
  local rows; rows=$(bsql "$port" "SELECT count(*) FROM pgbench_history")
  local sw; sw=$(bsql "$port" "SELECT pg_walfile_name(pg_switch_wal())")
  # a clean shutdown switches WAL once more (archive_mode=on) and archives
  # everything before it exits: the corpus ends with that last segment
  pg_stop "$PRIMARY"
  # the corpus: every archived segment from the backup's start segment on
  find "$WALDIR" -maxdepth 1 -type f -printf '%f\n' | awk -v f="$first" 'length($0)==24 && $0 >= f' |
    sort > "$SETUP/segments"
  local last; last=$(tail -n 1 "$SETUP/segments")
  [[ $last == "$sw" || $last > "$sw" ]] || die "the corpus ends with $last, before $sw"
  # no gaps (16 MiB segments: 256 per log file)
  local s n p=-1
  while read -r s; do
    n=$(( 16#${s:8:8} * 256 + 16#${s:16:8} ))
    (( p < 0 || n == p + 1 )) || die "the archived corpus has a gap before $s"
    p=$n
  done < "$SETUP/segments"
  # WAL from before the backup (the pgbench -i load) is not needed: drop it
  find "$WALDIR" -maxdepth 1 -type f -printf '%f\n' | awk -v f="$first" '$0 < f' |
    while read -r s; do rm -f "$WALDIR/$s"; done
  local start_lsn; start_lsn=$(sed -n 's/^START WAL LOCATION: \([0-9A-F/]*\) .*/\1/p' "$BASE/backup_label")
  {
    echo "KEY='$setup_key'"
    echo "ROWS=$rows"
    echo "FIRST=$first"
    echo "LAST=$last"
    echo "START_LSN=$start_lsn"
    echo "NSEG=$(wc -l < "$SETUP/segments")"
    echo "SYSID=$(pg_controldata "$BASE" | sed -n 's/^Database system identifier: *//p')"
  } > "$SETUP/INFO"
  sync
  log "corpus: $(wc -l < "$SETUP/segments") segments $first..$last, pgbench_history rows $rows"
}

if [[ ${FORCE:-0} == 1 || ! -f $SETUP/INFO ]] || ! grep -qxF "KEY='$setup_key'" "$SETUP/INFO"; then
  build_corpus
fi
# shellcheck disable=SC1091
. "$SETUP/INFO"
ROWS=${ROWS:?} FIRST=${FIRST:?} LAST=${LAST:?} START_LSN=${START_LSN:?} NSEG=${NSEG:?}
mapfile -t SEGS < "$SETUP/segments"

# a simulated data dir for loading repositories: pg_wal hard-linked to the corpus
make_sim() {
  local sim=$1 s
  rm -rf "$sim"; mkdir -p "$sim/pg_wal/archive_status" "$sim/global"
  cp "$BASE/global/pg_control" "$sim/global/"
  cp "$BASE/PG_VERSION" "$sim/"
  for s in "${SEGS[@]}"; do ln "$WALDIR/$s" "$sim/pg_wal/$s"; : > "$sim/pg_wal/archive_status/$s.ready"; done
}

# pgwal_load NAME PGWAL-ARGS...: pgwal archive every corpus segment, in order,
# run in a simulated data dir as PostgreSQL's archiver would
pgwal_load() {
  local name=$1; shift
  [[ -f $SETUP/$name.loaded ]] && return 0
  log "loading the corpus into $name"
  local sim=$SETUP/sim-$name s t0; make_sim "$sim"
  t0=$(now_s)
  ( cd "$sim"
    for s in "${SEGS[@]}"; do
      "$PGWAL_BIN" "$@" archive "pg_wal/$s" || die "pgwal archive $s into $name failed"
      mv "pg_wal/archive_status/$s.ready" "pg_wal/archive_status/$s.done"
    done )
  rm -rf "$sim"
  log "$name loaded in $(awk -v a="$t0" -v b="$(now_s)" 'BEGIN{printf "%.1f", b-a}') s"
  : > "$SETUP/$name.loaded"
}

# pgBackRest
pgbr_conf() {  # FILE PG1_PATH BASEDIR [extra lines]
  local f=$1 pg=$2 base=$3; shift 3
  mkdir -p "$base/lock" "$base/log" "$base/spool"
  {
    echo "[global]"
    echo "repo1-type=posix"
    echo "repo1-path=$SETUP/pgbr_repo"
    echo "compress-type=zst"
    echo "compress-level=$PGBR_LEVEL"
    echo "lock-path=$base/lock"
    echo "log-path=$base/log"
    echo "spool-path=$base/spool"
    echo "log-level-console=warn"
    echo "log-level-file=info"
    local l; for l in "$@"; do echo "$l"; done
    echo
    echo "[bench]"
    echo "pg1-path=$pg"
  } > "$f"
}
pgbr_wait_async() {  # wait until no pgBackRest async process holds a lock in DIR
  local lockdir=$1 i f busy
  for (( i = 0; i < 1200; i++ )); do
    busy=0
    for f in "$lockdir"/*.lock; do [[ -e $f ]] && ! flock -n "$f" true 2>/dev/null && busy=1; done
    (( busy )) || return 0
    sleep 0.05
  done
  log "warning: a pgBackRest async process still holds a lock in $lockdir after 60 s"
}
pgbr_load() {
  [[ -f $SETUP/pgbr.loaded ]] && return 0
  log "loading the corpus into the pgBackRest repository (stanza-create, archive-push)"
  rm -rf "$SETUP/pgbr_repo" "$SETUP/pgbr_push"
  pgbr_conf "$SETUP/pgbr_push.conf" "$PRIMARY" "$SETUP/pgbr_push"
  "$PGBACKREST" --config="$SETUP/pgbr_push.conf" --stanza=bench stanza-create --no-online >/dev/null
  local s t0; t0=$(now_s)
  for s in "${SEGS[@]}"; do
    "$PGBACKREST" --config="$SETUP/pgbr_push.conf" --stanza=bench archive-push "$WALDIR/$s" ||
      die "pgbackrest archive-push $s failed"
  done
  log "pgBackRest repository loaded in $(awk -v a="$t0" -v b="$(now_s)" 'BEGIN{printf "%.1f", b-a}') s"
  : > "$SETUP/pgbr.loaded"
}

FILE_REPO=file://$SETUP/repo_file
S3_CONF=$SETUP/pgwal-s3.toml
needs() { [[ " $VARIANTS " == *" $1 "* ]]; }
if needs pgwal_s3; then
  s3_net_start "$SETUP/s3"
  s3_config "$S3_CONF" "s3://bench/recovery"
  pgwal_load s3 --config "$S3_CONF"
fi
needs pgwal_file && pgwal_load file --repo "$FILE_REPO"
needs pgbr_async && pgbr_load
# the configs of the timed runs (after loading, so that [fetch] does not matter there)
FILE_CONF=$SETUP/pgwal-file.toml
printf 'repo = "%s"\n' "$FILE_REPO" > "$FILE_CONF"
if [[ -n ${PGWAL_PREFETCH:-} ]]; then
  printf '\n[fetch]\nprefetch = %d\n' "$PGWAL_PREFETCH" | tee -a "$FILE_CONF" >> "$S3_CONF"
fi

# ------------------------------------------------------------------ timed runs
RPORT=; free_port RPORT
restore_cmd() {
  case $1 in
    local) echo "false" ;;
    cp) echo "cp $WALDIR/%f %p" ;;
    pgwal_s3) echo "$PGWAL_BIN --config $S3_CONF fetch %f %p" ;;
    pgwal_file) echo "$PGWAL_BIN --config $FILE_CONF fetch %f %p" ;;
    pgbr_async) echo "$PGBACKREST --config=$RUN/pgbr.conf --stanza=bench archive-get %f \"%p\"" ;;
    *) die "unknown variant $1" ;;
  esac
}

# one_run VARIANT: sets RUN_WALL (s), RUN_END (redo done LSN), RUN_ROWS
one_run() {
  local v=$1 s
  pg_stop "$RDATA"
  [[ -f $RDATA/pg_wal/pgwal/prefetch.lock ]] && wait_unlocked "$RDATA/pg_wal/pgwal/prefetch.lock"
  rm -rf "$RUN"; mkdir -p "$RUN"
  cp -a "$BASE" "$RDATA"; chmod 700 "$RDATA"
  if [[ $v == local ]]; then
    for s in "${SEGS[@]}"; do cp "$WALDIR/$s" "$RDATA/pg_wal/$s"; done
  fi
  if [[ $v == pgbr_async ]]; then
    pgbr_conf "$RUN/pgbr.conf" "$RDATA" "$RUN/pgbr" "archive-async=y" "" "[global:archive-get]" \
      "process-max=$PGBR_PROCESS_MAX"
  fi
  local cmd; cmd=$(restore_cmd "$v")
  pg_set "$RDATA" "# --- recovery.sh ---" "port = $RPORT" "archive_mode = off" \
    "restore_command = '${cmd//\'/\'\'}'"
  : > "$RDATA/recovery.signal"
  sync
  local t0 t1 i=0 deadline
  t0=$(now_s)
  pg_ctl -D "$RDATA" -l "$RDATA.log" -W start >/dev/null
  _STARTED_PG+=("$RDATA")
  deadline=$(awk -v t="$t0" -v d="$RECOVERY_DEADLINE" 'BEGIN{printf "%d", t+d}')
  while ! grep -q 'database system is ready to accept connections' "$RDATA.log" 2>/dev/null; do
    if (( ++i % 50 == 0 )); then
      if grep -qE 'PANIC|startup process .* exited|database system is shut down' "$RDATA.log"; then
        tail -n 20 "$RDATA.log" >&2; die "$v: recovery failed (log above)"
      fi
      (( EPOCHSECONDS < deadline )) || { tail -n 20 "$RDATA.log" >&2; die "$v: recovery stalled: not done after ${RECOVERY_DEADLINE}s"; }
    fi
    sleep 0.02
  done
  t1=$(now_s)
  [[ $(bsql "$RPORT" "SELECT pg_is_in_recovery()") == f ]] || die "$v: still in recovery"
  local end rows
  end=$(sed -n 's/.*redo done at \([0-9A-F]*\/[0-9A-F]*\).*/\1/p' "$RDATA.log" | tail -n 1)
  rows=$(bsql "$RPORT" "SELECT count(*) FROM pgbench_history")
  cp "$RDATA.log" "$R/results/last-$v.log"
  pg_stop "$RDATA"
  [[ -f $RDATA/pg_wal/pgwal/prefetch.lock ]] && wait_unlocked "$RDATA/pg_wal/pgwal/prefetch.lock"
  [[ $v == pgbr_async ]] && pgbr_wait_async "$RUN/pgbr/lock"
  # keep pgwal's prefetcher log of the last run for a look at what it did
  if [[ -f $RDATA/pg_wal/pgwal/prefetch.log ]]; then cp "$RDATA/pg_wal/pgwal/prefetch.log" "$R/results/last-$v.prefetch.log"; fi
  RUN_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') RUN_END=$end RUN_ROWS=$rows
}

# wait_unlocked FILE: wait (max 60 s) until nobody holds an flock on FILE
# (pgwal's prefetcher exits on its own once recovery has ended)
wait_unlocked() {
  local f=$1 i
  for (( i = 0; i < 600; i++ )); do flock -n "$f" true 2>/dev/null && return 0; sleep 0.1; done
  log "warning: $f still locked after 60 s"
}

TSV=$R/results/recovery-$(date -u +%Y%m%dT%H%M%SZ).tsv
printf 'variant\trun\twall_s\tend_lsn\trows\n' > "$TSV"
log "corpus: $NSEG segments ($FIRST..$LAST), start $START_LSN, $ROWS rows; pgwal: $("$PGWAL_BIN" --version) (${BENCH_PGWAL_ORIG:-$PGWAL_BIN})"
END_LSN=
declare -A WALLS=()
for (( run = 1; run <= RUNS; run++ )); do
  for v in $VARIANTS; do
    one_run "$v"; wall=$RUN_WALL end=$RUN_END rows=$RUN_ROWS
    [[ -n $end ]] || die "$v run $run: no 'redo done at' line in the log"
    log "$v run $run: ${wall}s, redo done at $end, $rows rows"
    printf '%s\t%s\t%s\t%s\t%s\n' "$v" "$run" "$wall" "$end" "$rows" >> "$TSV"
    [[ $rows == "$ROWS" ]] || die "$v run $run: pgbench_history has $rows rows, the primary had $ROWS"
    [[ -z $END_LSN || $end == "$END_LSN" ]] || die "$v run $run: redo ended at $end, an earlier run at $END_LSN"
    END_LSN=$end
    WALLS[$v]+="$wall "
  done
done
s3_stop
rm -rf "$RUN"   # the setup (corpus, base, repositories) stays for the next run; FORCE=1 rebuilds it

# ------------------------------------------------------------------ report
mb=$(awk -v a="$(lsn_to_int "$START_LSN")" -v b="$(lsn_to_int "$END_LSN")" 'BEGIN{printf "%.1f", (b-a)/1e6}')
echo "# recovery.sh: $NSEG segments ($FIRST..$LAST), $mb MB of WAL replayed (backup start $START_LSN .. redo done $END_LSN),"
echo "# $ROWS pgbench_history rows checked in every run; RUNS=$RUNS, median; pgwal $("$PGWAL_BIN" --version | awk '{print $2}') (${BENCH_PGWAL_ORIG:-$PGWAL_BIN})"
if needs pgbr_async; then echo "# pgbr_async reads a posix repository: pgBackRest 2.45 cannot talk plain HTTP to s3s-fs"; fi
if [[ -n ${PGWAL_PREFETCH:-} ]]; then echo "# pgwal: [fetch] prefetch = $PGWAL_PREFETCH"; fi
if needs pgwal_s3; then
  if [[ ${S3_DELAY_MS:-0} != 0 ]]; then echo "# pgwal_s3: s3s-fs behind TLS and ${S3_DELAY_MS} ms each way (s3proxy.py${S3_RATE_MBIT:+, ${S3_RATE_MBIT} Mbit/s})"
  else echo "# pgwal_s3: s3s-fs over plain HTTP on loopback (S3_DELAY_MS=0)"; fi
fi
declare -A MED=()
for v in $VARIANTS; do MED[$v]=$(tr ' ' '\n' <<<"${WALLS[$v]}" | grep . | median); done
printf '%-11s %4s %8s %8s %8s %7s %7s %8s\n' variant runs wall_s min_s max_s seg_s MB_s vs_local
for v in $VARIANTS; do
  w=${MED[$v]}
  read -r mn mx < <(tr ' ' '\n' <<<"${WALLS[$v]}" | grep . | sort -g | awk 'NR==1{a=$1} {b=$1} END{print a, b}')
  awk -v v="$v" -v r="$RUNS" -v w="$w" -v mn="$mn" -v mx="$mx" -v n="$NSEG" -v mb="$mb" -v l="${MED[local]:-}" \
    'BEGIN{printf "%-11s %4d %8.2f %8.2f %8.2f %7.1f %7.1f %8s\n", v, r, w, mn, mx, n/w, mb/w, (l=="" ? "-" : sprintf("%.2f", w/l))}'
done
ratio() {  # A B: "A vs B: A's time / B's time"
  [[ -n ${MED[$1]:-} && -n ${MED[$2]:-} ]] || return 0
  awk -v a="${MED[$1]}" -v b="${MED[$2]}" -v n1="$1" -v n2="$2" \
    'BEGIN{printf "%s vs %s: %.2f (time ratio; %s is %.2fx as fast)\n", n1, n2, a/b, n1, b/a}'
}
ratio pgwal_s3 pgbr_async
ratio pgwal_s3 local
echo "# per-run rows: $TSV"
