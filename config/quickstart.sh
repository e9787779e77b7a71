#!/usr/bin/env bash
# pgwal quickstart: builds pgwal, starts a throwaway PostgreSQL cluster that
# archives every WAL segment with `archive_command = 'pgwal archive %p'` into
# a local-disk repository, writes some pgbench traffic, then recovers a copy
# of the cluster purely from that archive with `restore_command = 'pgwal fetch
# %f %p'` and checks that the copy has exactly the primary's rows.
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

say "building pgwal (cargo build --release)"
cargo build --release --quiet

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
FINGERPRINT="SELECT (SELECT count(*) FROM pgbench_history) || ' history rows, total balance ' || (SELECT sum(abalance) FROM pgbench_accounts)"

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

say "copying the cluster with pg_basebackup -X none (the copy holds no WAL: it must come from the archive)"
as_pg "$PG_BINDIR/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D "$WORK/restored" -X none -c fast

say "writing traffic: pgbench -i -s 2, then 2000 transactions"
as_pg "$PG_BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 2 -q postgres 2>&1 | tail -n 1
as_pg "$PG_BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -c 2 -t 1000 -n postgres | grep -E '^(tps|number of transactions actually)'
EXPECTED=$(psql_p "$PORT" "$FINGERPRINT")
LAST=$(psql_p "$PORT" "SELECT pg_walfile_name(pg_switch_wal())")

say "waiting until $LAST is in the repository"
for _ in $(seq 1 600); do
    DONE=$(psql_p "$PORT" "SELECT coalesce(last_archived_wal >= '$LAST', false) || ' ' || failed_count FROM pg_stat_archiver")
    [[ $DONE == true* ]] && break
    sleep 0.1
done
[[ $DONE == true* ]] || { echo "archiving did not reach $LAST; see $WORK/primary.log" >&2; exit 1; }
echo "archived through $LAST, failed attempts: ${DONE#* }"
as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/primary" -m fast -w stop >/dev/null

say "recovering the copy with: restore_command = '$PGWAL --repo $REPO fetch %f %p'"
cat >> "$WORK/restored/postgresql.conf" <<CONF
port = $((PORT - 1))
archive_mode = off
restore_command = '$PGWAL --repo $REPO fetch %f %p'
CONF
as_pg touch "$WORK/restored/recovery.signal"
as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -w -t 300 start >/dev/null
for _ in $(seq 1 600); do
    [[ $(psql_p $((PORT - 1)) "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]] && break
    sleep 0.1
done
GOT=$(psql_p $((PORT - 1)) "$FINGERPRINT")
echo "primary:  $EXPECTED"
echo "restored: $GOT"
[[ $GOT == "$EXPECTED" ]] || { echo "MISMATCH: see $WORK/restored.log" >&2; exit 1; }

say "OK: the copy recovered from the pgwal archive has exactly the primary's rows"
echo "repository: $WORK/repo ($(du -sh "$WORK/repo" | cut -f1), $(find "$WORK/repo/wal" -type f | wc -l) WAL files)"
echo "server logs: $WORK/primary.log, $WORK/restored.log"
