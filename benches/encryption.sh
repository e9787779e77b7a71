#!/usr/bin/env bash
# encryption.sh - what client-side encryption costs: the same work on a
# plaintext and on an encrypted file:// repository, in the same run.
#
# Usage (as root, from the repository root, after `cargo build --release`):
#   bash benches/encryption.sh                     # pgbench scale 20, 3 runs
#   SCALE=50 RUNS=5 bash benches/encryption.sh
#
# Env: PGWAL_BIN (target/release/pgwal), CORPUS (/var/tmp/pgwal-bench/corpus,
#      WAL segments for archive and fetch), WORK (/var/tmp/pgwal-enc-bench),
#      SCALE (20), RUNS (3), PG_BIN (/usr/lib/postgresql/15/bin), PORT (55471).
#
# 1. archive: each corpus segment archived by a fresh `pgwal archive`
#    process (as archive_command runs), CPU (user+sys, wait4) and wall time
#    summed per pass; passes alternate plain / encrypted; medians print.
# 2. fetch: each segment fetched back by a fresh `pgwal fetch` (outside a
#    data directory: no prefetching), same measures.
# 3. backup and restore of a pgbench cluster: the server archives into both
#    repositories; `pgwal backup` into each RUNS times interleaved, then
#    `pgwal restore` of each RUNS times interleaved; wall time and CPU
#    (user+sys of pgwal, wait4) per call, medians and the ratios print. On a
#    busy machine the CPU ratio is the steadier of the two.
set -euo pipefail

PGWAL_BIN=$(realpath "${PGWAL_BIN:-target/release/pgwal}")
CORPUS=${CORPUS:-/var/tmp/pgwal-bench/corpus}
WORK=${WORK:-/var/tmp/pgwal-enc-bench}
SCALE=${SCALE:-20}
RUNS=${RUNS:-3}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-55471}
U=postgres

as_u() { runuser -u "$U" -- env -u PGWAL_ENCRYPTION_KEY_FILE "$@"; }

PGDATA_PID=""
cleanup() { [[ -n $PGDATA_PID ]] && as_u "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK/sim/pg_wal" "$WORK/out"
install -m 0755 "$PGWAL_BIN" "$WORK/pgwal"
head -c 32 /dev/urandom | base64 > "$WORK/key"
chmod 600 "$WORK/key"
for f in "$CORPUS"/*; do
  n=$(basename "$f"); [[ $n =~ ^[0-9A-F]{24}$ ]] && cp "$f" "$WORK/sim/pg_wal/$n"
done
chown -R "$U:" "$WORK"
echo "pgwal: $PGWAL_BIN; corpus: $CORPUS ($(ls "$WORK/sim/pg_wal" | wc -l) segments); runs: $RUNS; scale: $SCALE"

# ---- 1 and 2: archive and fetch, per-process CPU and wall time ---------------
as_u python3 - "$WORK" "$RUNS" <<'PY'
import os, shutil, statistics, sys, time
work, runs = sys.argv[1], int(sys.argv[2])
pgwal = os.path.join(work, "pgwal")
sim = os.path.join(work, "sim")
segs = sorted(os.listdir(os.path.join(sim, "pg_wal")))
def env(kind):
    e = dict(os.environ, PGWAL_REPO="file://%s/repo_%s" % (work, kind))
    e.pop("PGDATA", None)
    if kind == "enc":
        e["PGWAL_ENCRYPTION_KEY_FILE"] = os.path.join(work, "key")
    return e
def call(args, cwd, e):
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.chdir(cwd)
        fd = os.open(os.devnull, os.O_WRONLY); os.dup2(fd, 1); os.dup2(fd, 2)
        os.execve(pgwal, [pgwal] + args, e)
    _, status, ru = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("%s failed: %s" % (args, status))
    return ru.ru_utime + ru.ru_stime, time.monotonic() - t0
res = {(op, k): [] for op in ("archive", "fetch") for k in ("plain", "enc")}
for r in range(runs):
    for kind in ("plain", "enc"):
        shutil.rmtree(os.path.join(work, "repo_" + kind), ignore_errors=True)
        os.sync()
        cpu = wall = 0.0
        for s in segs:
            c, w = call(["archive", "pg_wal/" + s], sim, env(kind)); cpu += c; wall += w
        res[("archive", kind)].append((cpu / len(segs) * 1e3, wall / len(segs) * 1e3))
        cpu = wall = 0.0
        out = os.path.join(work, "out")
        for s in segs:
            dest = os.path.join(out, s)
            c, w = call(["fetch", s, dest], out, env(kind)); cpu += c; wall += w
            os.unlink(dest)
        res[("fetch", kind)].append((cpu / len(segs) * 1e3, wall / len(segs) * 1e3))
for op in ("archive", "fetch"):
    for kind in ("plain", "enc"):
        v = res[(op, kind)]
        print("%-7s %-5s CPU ms/segment median %.1f (runs %s)  wall ms/segment median %.1f (runs %s)" % (
            op, kind, statistics.median(x[0] for x in v), " ".join("%.1f" % x[0] for x in v),
            statistics.median(x[1] for x in v), " ".join("%.1f" % x[1] for x in v)))
    p = statistics.median(x[0] for x in res[(op, "plain")]); e = statistics.median(x[0] for x in res[(op, "enc")])
    print("%-7s encrypted/plain CPU: %+.1f%%" % (op, (e / p - 1) * 100))
PY

# ---- 3: backup and restore of a pgbench cluster --------------------------------
K=$WORK/key
as_u "$PG_BIN/initdb" -D "$WORK/pg" -A trust --data-checksums >/dev/null
cat >> "$WORK/pg/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
archive_mode = on
archive_command = '$WORK/pgwal --repo file://$WORK/brepo_plain archive %p && $WORK/pgwal --repo file://$WORK/brepo_enc --encryption-key-file $K archive %p'
max_wal_size = 1GB
EOF
as_u "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
PGDATA_PID=1
as_u "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
CONN="host=$WORK port=$PORT dbname=postgres"
# timed CMD...: runs CMD, prints "WALL CPU" (seconds; CPU = user+sys of every
# process it waited for, from wait4's rusage), fails when CMD fails.
timed() {
  python3 -c '
import os, resource, subprocess, sys, time
t0 = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
if r.returncode != 0:
    sys.exit("%s failed: exit %d" % (sys.argv[1:], r.returncode))
print("%.3f %.3f" % (wall, ru.ru_utime + ru.ru_stime))' "$@"
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A bw bc rw rc
# Backups interleaved plain / encrypted, RUNS each, the server idle between.
for r in $(seq "$RUNS"); do
  for kind in plain enc; do
    extra=(); [[ $kind == enc ]] && extra=(--encryption-key-file "$K")
    read -r w c < <(timed runuser -u "$U" -- env -u PGWAL_ENCRYPTION_KEY_FILE "$WORK/pgwal" \
      --repo "file://$WORK/brepo_$kind" "${extra[@]}" backup --checkpoint fast --conninfo "$CONN" --pgdata "$WORK/pg")
    bw[$kind]+="$w "; bc[$kind]+="$c "
  done
done
for kind in plain enc; do
  printf 'backup  %-5s wall s: %s median %s; CPU s: %s median %s (repository %s)\n' "$kind" "${bw[$kind]}" \
    "$(echo "${bw[$kind]}" | median)" "${bc[$kind]}" "$(echo "${bc[$kind]}" | median)" \
    "$(du -sh "$WORK/brepo_$kind" | cut -f1)"
done
as_u "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null; PGDATA_PID=""
# Restores of the newest backup, interleaved plain / encrypted.
for r in $(seq "$RUNS"); do
  for kind in plain enc; do
    extra=(); [[ $kind == enc ]] && extra=(--encryption-key-file "$K")
    rm -rf "$WORK/restored"; sync
    read -r w c < <(timed runuser -u "$U" -- env -u PGWAL_ENCRYPTION_KEY_FILE "$WORK/pgwal" \
      --repo "file://$WORK/brepo_$kind" "${extra[@]}" restore --target-dir "$WORK/restored" --target-immediate)
    rw[$kind]+="$w "; rc[$kind]+="$c "
  done
done
du -sh "$WORK/pg" | awk '{print "data directory " $1}'
for kind in plain enc; do
  printf 'restore %-5s wall s: %s median %s; CPU s: %s median %s\n' "$kind" "${rw[$kind]}" \
    "$(echo "${rw[$kind]}" | median)" "${rc[$kind]}" "$(echo "${rc[$kind]}" | median)"
done
for op in backup restore; do
  declare -n W="${op:0:1}w" C="${op:0:1}c"
  awk -v op="$op" -v pw="$(echo "${W[plain]}" | median)" -v ew="$(echo "${W[enc]}" | median)" \
      -v pc="$(echo "${C[plain]}" | median)" -v ec="$(echo "${C[enc]}" | median)" \
    'BEGIN { printf "%-7s encrypted/plain wall: %+.1f%%  CPU: %+.1f%%\n", op, (ew/pw-1)*100, (ec/pc-1)*100 }'
  unset -n W C
done
