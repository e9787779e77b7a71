#!/usr/bin/env bash
# pgwal quickstart: builds pgwal, starts a throwaway PostgreSQL cluster that
# archives every WAL segment with `archive_command = 'pgwal archive %p'` into
# a local-disk repository, takes a base backup with `pgwal backup`, writes
# pgbench traffic, marks a restore point, then "makes a mistake" (deletes
# rows). `pgwal restore --target-name` then brings a copy back to the moment
# before the mistake, replaying the archive through `pgwal fetch`, and the
# script checks that the copy has exactly the rows the primary had then.
#
#   bash config/quickstart.sh          (as root or as a normal user)
#
# Everything lives in $PGWAL_QUICKSTART_DIR (default /tmp/pgwal-quickstart),
# which is wiped first; both servers are stopped at the end. As root it
# installs PostgreSQL with apt-get if it is missing and runs the servers as
# the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORK=${PGWAL_QUICKSTART_DIR:-/tmp/pgwal-quickstart}
say() { printf '\n==> %s\n' "$*"; }

find_pg_bindir() {
    if [[ -n ${PG_BINDIR:-} && -x $PG_BINDIR/initdb ]]; then echo "$PG_BINDIR"; return; fi
    if command -v pg_config >/dev/null && [[ -x $(pg_config --bindir)/initdb ]]; then pg_config --bindir; return; fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

PG_BINDIR=$(find_pg_bindir || true)
if [[ -z $PG_BINDIR || ! -x $PG_BINDIR/initdb ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "PostgreSQL server binaries not found: sudo apt-get install postgresql-15 (or set PG_BINDIR)" >&2
        exit 1
    fi
    say "installing PostgreSQL (apt-get install postgresql-15)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql-15 >/dev/null
    PG_BINDIR=$(find_pg_bindir)
fi

# PostgreSQL refuses to run as root: use the postgres account then.
if [[ $(id -u) -eq 0 ]]; then
    getent passwd postgres >/dev/null || useradd --system --user-group --create-home --shell /bin/bash postgres
    as_pg() { runuser -u postgres -- "$@"; }
    OWNER=postgres
else
    as_pg() { "$@"; }
    OWNER=$(id -un)
fi

say "building pgwal (cargo build --release; the first build compiles about 300 crates and takes several minutes)"
cargo build --release

if [[ -d $WORK ]]; then
    for d in "$WORK/primary" "$WORK/restored"; do
        [[ -f $d/postmaster.pid ]] && as_pg "$PG_BINDIR/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
fi
mkdir -p "$WORK"
install -m 0755 target/release/pgwal "$WORK/pgwal"
chown "$OWNER" "$WORK"
chmod 0755 "$WORK"

PGWAL="$WORK/pgwal"
REPO="file://$WORK/repo"
PORT=${PGWAL_QUICKSTART_PORT:-55499}
psql_p() { as_pg "$PG_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$1" -U postgres -d postgres -c "$2"; }
FINGERPRINT="SELECT (SELECT count(*) FROM pgbench_accounts) || ' accounts, ' || (SELECT count(*) FROM pgbench_history) || ' history rows, total balance ' || (SELECT sum(abalance) FROM pgbench_accounts)"

stop_all() {
    for d in "$WORK/primary" "$WORK/restored"; do
        [[ -f $d/postmaster.pid ]] && as_pg "$PG_BINDIR/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
    done
}
trap stop_all EXIT

say "creating a cluster that archives with: archive_command = '$PGWAL --repo $REPO archive %p'"
as_pg "$PG_BINDIR/initdb" -D "$WORK/primary" --data-checksums -A trust -U postgres >/dev/null
cat >> "$WORK/primary/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '$PGWAL --repo $REPO archive %p'
CONF
as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null

say "pgbench -i -s 2, then a base backup: pgwal backup --checkpoint fast"
as_pg "$PG_BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 2 -q postgres 2>&1 | tail -n 1
BACKUP=$(as_pg env PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres "$PGWAL" --repo "$REPO" --pgdata "$WORK/primary" backup --checkpoint fast)
echo "backup $BACKUP"

say "traffic after the backup (2000 pgbench transactions), then a restore point"
as_pg "$PG_BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -c 2 -t 1000 -n postgres | grep -E '^(tps|number of transactions actually)'
EXPECTED=$(psql_p "$PORT" "$FINGERPRINT")
psql_p "$PORT" "SELECT pg_create_restore_point('before_mistake')" >/dev/null
say "the mistake: DELETE FROM pgbench_accounts WHERE aid <= 50000"
psql_p "$PORT" "DELETE FROM pgbench_accounts WHERE aid <= 50000"
LAST=$(psql_p "$PORT" "SELECT pg_walfile_name(pg_switch_wal())")

say "waiting until $LAST is in the repository"
for _ in $(seq 1 600); do
    DONE=$(psql_p "$PORT" "SELECT coalesce(last_archived_wal >= '$LAST', false) || ' ' || failed_count FROM pg_stat_archiver")
    [[ $DONE == true* ]] && break
    sleep 0.1
done
[[ $DONE == true* ]] || { echo "archiving did not reach $LAST; see $WORK/primary.log" >&2; exit 1; }
echo "archived through $LAST, failed attempts: ${DONE#* }"
as_pg "$PGWAL" --repo "$REPO" list

say "restoring a copy to the restore point: pgwal restore --target-name before_mistake --target-action promote"
as_pg "$PGWAL" --repo "$REPO" restore --target-dir "$WORK/restored" --target-name before_mistake --target-action promote
cat >> "$WORK/restored/postgresql.conf" <<CONF
port = $((PORT - 1))
archive_mode = off
CONF
grep -E "^(restore_command|recovery_target)" "$WORK/restored/postgresql.auto.conf" | grep -v "= ''" || true
as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -w -t 300 start >/dev/null
for _ in $(seq 1 600); do
    [[ $(psql_p $((PORT - 1)) "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]] && break
    sleep 0.1
done
GOT=$(psql_p $((PORT - 1)) "$FINGERPRINT")
echo "primary before the mistake: $EXPECTED"
echo "restored copy:             $GOT"
[[ $GOT == "$EXPECTED" ]] || { echo "MISMATCH: see $WORK/restored.log" >&2; exit 1; }

say "OK: the copy restored from the pgwal repository has exactly the rows from before the mistake"
echo "repository: $WORK/repo ($(du -sh "$WORK/repo" | cut -f1), $(find "$WORK/repo/wal" -type f | wc -l) WAL files)"
echo "server logs: $WORK/primary.log, $WORK/restored.log"
