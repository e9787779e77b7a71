#!/usr/bin/env bash
# archive_cpu.sh - CPU per 16 MiB WAL segment of `pgwal archive` against the
# codec floor (zstd + SHA-256 in-process, benches/codec_floor.rs).
#
# Usage (from the repository root, after `cargo build --release`):
#   bash benches/archive_cpu.sh                    # corpus /var/tmp/pgwal-bench/corpus
#   CORPUS=/some/dir RUNS=5 bash benches/archive_cpu.sh
# Make a corpus with `bash ../shared/bench/make_wal.sh /var/tmp/pgwal-bench/corpus 20`.
#
# Env: CORPUS (directory of WAL segments), PGWAL_BIN (target/release/pgwal),
#      RUNS (3: passes over the corpus, each into a fresh file:// repository;
#      the median pass prints), WORK (/var/tmp/pgwal-archive-cpu), FLOOR (1:
#      also build and run the codec_floor bench; 0 skips it).
#
# Each `pgwal archive pg_wal/SEG` runs as PostgreSQL runs archive_command:
# a fresh process, working directory a simulated data directory whose
# pg_wal/ holds the corpus (hard links) and no archive_status/, so that every
# call stores exactly its own segment (no archiving ahead). CPU is user+sys
# of each call from wait4() (microsecond resolution), summed over the pass.
# Prints: ms/segment (median pass; mean, p50 and max call of that pass),
# repository bytes and the compression ratio, then the floor.
set -euo pipefail

CORPUS=${CORPUS:-/var/tmp/pgwal-bench/corpus}
PGWAL_BIN=${PGWAL_BIN:-target/release/pgwal}
RUNS=${RUNS:-3}
WORK=${WORK:-/var/tmp/pgwal-archive-cpu}
FLOOR=${FLOOR:-1}

[[ -x $PGWAL_BIN ]] || { echo "PGWAL_BIN=$PGWAL_BIN is not executable (cargo build --release)" >&2; exit 1; }
PGWAL_BIN=$(realpath "$PGWAL_BIN")
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
SIM=$WORK/pgsim
rm -rf "$SIM"
mkdir -p "$SIM/pg_wal"
nseg=0
for f in "$CORPUS"/*; do
  n=$(basename "$f")
  [[ $n =~ ^[0-9A-F]{24}$ ]] || continue
  ln "$f" "$SIM/pg_wal/$n" 2>/dev/null || cp "$f" "$SIM/pg_wal/$n"
  nseg=$((nseg + 1))
done
((nseg > 0)) || { echo "no WAL segments in $CORPUS" >&2; exit 1; }
echo "pgwal: $PGWAL_BIN ($(stat -c %s "$PGWAL_BIN") bytes); corpus: $CORPUS ($nseg segments); runs: $RUNS"

python3 - "$PGWAL_BIN" "$SIM" "$WORK/repo" "$RUNS" <<'PY'
import os, shutil, statistics, sys
pgwal, sim, repo, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
segs = sorted(n for n in os.listdir(os.path.join(sim, "pg_wal")))
env = dict(os.environ, PGWAL_REPO="file://" + repo)
env.pop("PGDATA", None)
passes = []
for r in range(runs):
    shutil.rmtree(repo, ignore_errors=True)
    os.sync()
    calls = []
    for s in segs:
        pid = os.fork()
        if pid == 0:
            os.chdir(sim)
            os.execve(pgwal, [pgwal, "archive", "pg_wal/" + s], env)
        _, status, ru = os.wait4(pid, 0)
        if status != 0:
            sys.exit(f"pgwal archive pg_wal/{s} failed (status {status})")
        calls.append((ru.ru_utime + ru.ru_stime) * 1e3)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(repo, "wal")) for f in fs)
    passes.append((sum(calls) / len(calls), calls, size))
    print(f"  pass {r + 1}: {passes[-1][0]:.1f} ms/segment")
mean, calls, size = sorted(passes, key=lambda p: p[0])[len(passes) // 2]
orig = sum(os.path.getsize(os.path.join(sim, "pg_wal", s)) for s in segs)
print(f"pgwal_archive_ms_per_segment={mean:.1f} p50_call_ms={statistics.median(calls):.1f} "
      f"max_call_ms={max(calls):.1f} wal_bytes={size} ratio={orig / size:.3f}")
PY

if [[ $FLOOR == 1 ]]; then
  cargo bench -q --bench codec_floor -- "$CORPUS" 2>/dev/null | grep floor_ms_per_segment
fi
