#!/usr/bin/env bash
# sustained_archive.sh - can archive_command keep up with a busy primary?
#
# Usage (as root or as postgres; as root it re-execs itself as BENCH_USER):
#   bash benches/sustained_archive.sh                     # 60 s per variant
#   DURATION=15 bash benches/sustained_archive.sh         # quick
#   RATE=500 VARIANTS="cp pgwal_s3" bash benches/sustained_archive.sh
#
# Env (besides those of bench_common.sh: WORK, PG_BIN, BENCH_USER, PGWAL_BIN,
# S3S_FS_BIN, PORT_BASE, SCALE):
#   DURATION        seconds of pgbench per variant                        [60]
#   CLIENTS / JOBS  pgbench -c / -j (tpcb-like)                        [4 / 2]
#   RATE            if set, pgbench -R RATE (transactions/s) instead of
#                   unthrottled
#   VARIANTS        cp_fsync cp pgwal_file pgwal_s3
#   DRAIN_DEADLINE  seconds to wait after pgbench for the backlog to reach 0 [600]
#   PG_EXTRA        extra postgresql.conf lines for the primary, separated by
#                   ';', e.g. "synchronous_commit = off" to generate WAL faster
#                   than tps-bound pgbench does (default: none)
#   FORCE=1         rebuild the template cluster
#
# For each variant, a fresh primary (a copy of a template made once: initdb
# --data-checksums, wal_level=replica, full_page_writes=on,
# checkpoint_timeout=60s, max_wal_size=512MB, pgbench -i -s SCALE with
# filler = md5(aid)) is started with archive_mode=on and that variant's
# archive_command, into an empty destination:
#   cp_fsync    cp %p DIR/%f && sync DIR/%f    (durable copy: the ceiling)
#   cp          cp %p DIR/%f                   (not durable: the upper bound)
#   pgwal_file  pgwal archive %p, file:// repository
#   pgwal_s3    pgwal archive %p, s3s-fs on 127.0.0.1 (plain HTTP)
# Then pgbench runs for DURATION seconds while a sampler records every second
# the number of pg_wal/archive_status/*.ready files and the size of pg_wal
# ($WORK/sustained/results/samples-<variant>-<time>.tsv). After pgbench the
# script waits (polling every 0.2 s) until no .ready file is left.
#
# Columns:
#   variant    as above
#   tps        pgbench tps (without initial connection time)
#   wal_MB_s   WAL generated: pg_current_wal_lsn() delta over the pgbench run
#              / its wall time (10^6 bytes)
#   max_ready  largest .ready backlog sampled (segments waiting to be archived)
#   end_ready  backlog when pgbench ended
#   trend      backlog growth over the second half of the run, segments/min
#              (about 0 = keeps up; > 0 = falls behind)
#   max_wal_MB largest pg_wal size sampled (10^6 bytes)
#   drain_s    seconds after pgbench ended until the backlog was 0
#   failed     pg_stat_archiver.failed_count at the end
# and one line per variant: "VARIANT sustains N MB/s of WAL with backlog <= K".
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench_common.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
RATE=${RATE:-}
VARIANTS=${VARIANTS:-cp_fsync cp pgwal_file pgwal_s3}
DRAIN_DEADLINE=${DRAIN_DEADLINE:-600}

bench_begin "$0" "$@"

W=$WORK/sustained
TEMPLATE=$W/template
DATA=$W/data
DEST=$W/dest
mkdir -p "$W" "$W/results"

# ------------------------------------------------------------------ template
tkey="SCALE=$SCALE"
if [[ ${FORCE:-0} == 1 || ! -f $W/template.key || $(cat "$W/template.key") != "$tkey" ]]; then
  log "building the template cluster ($tkey)"
  rm -f "$W/template.key"
  tport=; free_port tport
  pg_init "$TEMPLATE" "$tport"
  pg_set "$TEMPLATE" "archive_mode = off"
  pg_start "$TEMPLATE"
  pgbench_load "$tport"
  pg_stop "$TEMPLATE"
  echo "$tkey" > "$W/template.key"
fi

PORT=; free_port PORT
if [[ " $VARIANTS " == *" pgwal_s3 "* ]]; then
  rm -rf "$W/s3"
  s3_start "$W/s3"
fi

archive_cmd() {
  case $1 in
    cp_fsync) echo "cp %p $DEST/%f && sync $DEST/%f" ;;
    cp) echo "cp %p $DEST/%f" ;;
    pgwal_file) echo "$PGWAL_BIN --repo file://$DEST archive %p" ;;
    pgwal_s3) echo "$PGWAL_BIN --config $W/pgwal-s3.toml archive %p" ;;
    *) die "unknown variant $1" ;;
  esac
}

ready_count() { local a=("$DATA"/pg_wal/archive_status/*.ready); [[ -e ${a[0]} ]] && echo "${#a[@]}" || echo 0; }

# sampler OUT: every second "t ready pg_wal_bytes" until killed
sampler() {
  local out=$1 t0=$EPOCHREALTIME
  while :; do
    printf '%s\t%s\t%s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')" \
      "$(ready_count)" "$(du -sb "$DATA/pg_wal" 2>/dev/null | cut -f1)" >> "$out"
    sleep 1
  done
}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
TSV=$W/results/sustained-$STAMP.tsv
printf 'variant\ttps\twal_MB_s\tmax_ready\tend_ready\ttrend_seg_min\tmax_wal_MB\tdrain_s\tfailed\n' > "$TSV"
declare -a SUMMARY=()
log "pgwal: $("$PGWAL_BIN" --version) (${BENCH_PGWAL_ORIG:-$PGWAL_BIN}); pgbench -c $CLIENTS -j $JOBS -T $DURATION${RATE:+ -R $RATE}, scale $SCALE"

for v in $VARIANTS; do
  pg_stop "$DATA"
  rm -rf "$DATA" "$DATA.log" "$DEST"
  case $v in
    pgwal_s3)
      rm -rf "$W/s3/root/bench/sustained"
      s3_config "$W/pgwal-s3.toml" "s3://bench/sustained" ;;
    pgwal_file) ;;                 # pgwal creates the repository on the first archive
    *) mkdir -p "$DEST" ;;
  esac
  cp -a "$TEMPLATE" "$DATA"
  cmd=$(archive_cmd "$v")
  pg_set "$DATA" "# --- sustained_archive.sh ---" "port = $PORT" "archive_mode = on" \
    "archive_command = '${cmd//\'/\'\'}'"
  IFS=';' read -r -a extra <<<"${PG_EXTRA:-}"
  for l in "${extra[@]}"; do if [[ -n ${l// /} ]]; then pg_set "$DATA" "$l"; fi; done
  sync
  pg_start "$DATA"
  bsql "$PORT" "CHECKPOINT" >/dev/null
  samples=$W/results/samples-$v-$STAMP.tsv
  printf 't_s\tready\tpg_wal_bytes\n' > "$samples"
  sampler "$samples" &
  spid=$!; _STARTED_PIDS+=("$spid")
  lsn0=$(bsql "$PORT" "SELECT pg_current_wal_lsn()")
  t0=$(now_s)
  out=$(pgbench -h "$SOCKDIR" -p "$PORT" -U postgres -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -n \
        ${RATE:+-R "$RATE"} postgres 2>&1) || { echo "$out" >&2; die "$v: pgbench failed"; }
  t1=$(now_s)
  lsn1=$(bsql "$PORT" "SELECT pg_current_wal_lsn()")
  end_ready=$(ready_count)
  # drain: until no .ready is left
  deadline=$(( EPOCHSECONDS + DRAIN_DEADLINE ))
  while (( $(ready_count) > 0 )); do
    (( EPOCHSECONDS < deadline )) || { log "warning: $v: backlog not drained after ${DRAIN_DEADLINE}s"; break; }
    sleep 0.2
  done
  t2=$(now_s)
  (( $(ready_count) == 0 )) && drain=$(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.1f", b-a}') || drain=">$DRAIN_DEADLINE"
  sleep 1   # one more sample after the drain
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; forget_pid "$spid"
  failed=$(bsql "$PORT" "SELECT failed_count FROM pg_stat_archiver")
  pg_stop "$DATA"
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out" | awk '{printf "%.0f", $1}')
  mv "$DATA.log" "$W/results/server-$v-$STAMP.log"
  dur=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
  walmb=$(awk -v a="$(lsn_to_int "$lsn0")" -v b="$(lsn_to_int "$lsn1")" -v d="$dur" 'BEGIN{printf "%.1f", (b-a)/1e6/d}')
  # samples taken while pgbench ran: t_s <= dur
  read -r max_ready max_wal trend < <(awk -v d="$dur" -F'\t' 'NR>1 {
      if ($2 > mr) mr = $2; if ($3 > mw) mw = $3
      if ($1 <= d) { if (h == "" && $1 >= d/2) { h = $2; th = $1 } last = $2; tl = $1 } }
    END { tr = (tl > th) ? (last - h) / (tl - th) * 60 : 0
          printf "%d %.0f %.1f\n", mr, mw/1e6, tr }' "$samples")
  (( end_ready > max_ready )) && max_ready=$end_ready
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$tps" "$walmb" "$max_ready" "$end_ready" "$trend" \
    "$max_wal" "$drain" "$failed" >> "$TSV"
  log "$v: tps $tps, WAL $walmb MB/s, backlog max $max_ready end $end_ready (trend $trend seg/min), pg_wal max $max_wal MB, drained in $drain s, failed $failed"
  SUMMARY+=("$v sustains $walmb MB/s of WAL with backlog <= $max_ready (drained ${drain}s after pgbench; trend $trend seg/min)")
  rm -rf "$DATA" "$DEST"
  [[ $v == pgwal_s3 ]] && rm -rf "$W/s3/root/bench/sustained"
done
s3_stop
rm -rf "$W/s3" "$W/pgwal-s3.toml"   # the template stays for the next run; FORCE=1 rebuilds it

echo "# sustained_archive.sh: pgbench tpcb-like -c $CLIENTS -j $JOBS -T $DURATION${RATE:+ -R $RATE}, scale $SCALE, md5 filler${PG_EXTRA:+; $PG_EXTRA};"
echo "# pgwal $("$PGWAL_BIN" --version | awk '{print $2}') (${BENCH_PGWAL_ORIG:-$PGWAL_BIN}); MB = 10^6 bytes; samples every 1 s"
column -t -s $'\t' "$TSV"
printf '%s\n' "${SUMMARY[@]}"
echo "# rows: $TSV; samples: $W/results/samples-*-$STAMP.tsv"
