#!/usr/bin/env bash
# Real services for Headwater's integration tests, on 127.0.0.1 only, state under <repo>/.services/.
#
#   scripts/services.sh start  [postgres|kafka|prometheus|moto ...]   install on first use, then start (idempotent)
#   scripts/services.sh stop   [postgres|kafka|prometheus|moto ...]   stop what this script started (pid files only)
#   scripts/services.sh status [postgres|kafka|prometheus|moto ...]   one line per service; non-zero if any is down
#
# Services (ports overridable with HEADWATER_PG_PORT, HEADWATER_KAFKA_PORT, HEADWATER_KAFKA_CONTROLLER_PORT,
# HEADWATER_PROMETHEUS_PORT, HEADWATER_MOTO_PORT; keep them in step with scripts/services.env):
#   postgres   Debian's PostgreSQL 15 + wal2json, own cluster in .services/postgres, wal_level=logical, trust auth
#   kafka      Apache Kafka broker (KRaft, broker+controller) from Maven Central jars, pinned below
#   prometheus Debian's prometheus, our own instance (the system service is never started)
#   moto       moto's server mode (AWS API emulator; Headwater uses its Kinesis), in its own venv .services/moto/venv
#              from scripts/moto-requirements.lock (every transitive dependency pinned)
set -euo pipefail
# Close every file descriptor the caller left open (but the standard three, and 255: bash reading this script),
# so that the long-running services started below inherit none: a broker holding, say, the caller's
# `flock /tmp/headwater-ray.lock` descriptor would keep that lock taken for as long as it runs.
for _fd in /proc/$$/fd/*; do
    _fd=${_fd##*/}
    case $_fd in 0|1|2|255) ;; *) eval "exec $_fd>&-" 2>/dev/null || true ;; esac
done
unset _fd
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SERVICES_DIR="$REPO_ROOT/.services"

# ---- pinned versions ------------------------------------------------------------------------------------
KAFKA_VERSION=4.1.1                 # org.apache.kafka:kafka_2.13 from Maven Central
KAFKA_SCALA=2.13
LOG4J_VERSION=2.24.3                # the log4j2 version kafka 4.1.1 itself depends on (adds the slf4j binding)
DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
KAFKA_LIBS_REV=1                    # bump when the dependency list below changes
PG_MAJOR=15                         # Debian 12's PostgreSQL
MOTO_LOCK="$SCRIPT_DIR/moto-requirements.lock"   # moto[server]==5.2.5 and its dependencies, pinned

# ---- ports ----------------------------------------------------------------------------------------------
HOST=127.0.0.1
PG_PORT=${HEADWATER_PG_PORT:-54329}
KAFKA_PORT=${HEADWATER_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${HEADWATER_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
PROM_PORT=${HEADWATER_PROMETHEUS_PORT:-19090}
MOTO_PORT=${HEADWATER_MOTO_PORT:-19094}   # 19093 is Kafka's controller port

# ---- layout ---------------------------------------------------------------------------------------------
PG_LINK="$SERVICES_DIR/postgres"    # may be a symlink to /var/tmp/... when the postgres user can't reach the repo
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_LIB="/usr/lib/postgresql/$PG_MAJOR/lib"
KAFKA_HOME="$SERVICES_DIR/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_STAMP="$KAFKA_LIBS/.headwater-kafka_$KAFKA_SCALA-$KAFKA_VERSION-rev$KAFKA_LIBS_REV"
KAFKA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/headwater/kafka_$KAFKA_SCALA-$KAFKA_VERSION-rev$KAFKA_LIBS_REV"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_LOG="$KAFKA_HOME/kafka.log"
KAFKA_PID="$KAFKA_HOME/kafka.pid"
PROM_HOME="$SERVICES_DIR/prometheus"
PROM_LOG="$PROM_HOME/prometheus.log"
PROM_PID="$PROM_HOME/prometheus.pid"
PROM_BIN=/usr/bin/prometheus
MOTO_HOME="$SERVICES_DIR/moto"
MOTO_VENV="$MOTO_HOME/venv"
MOTO_BIN="$MOTO_VENV/bin/moto_server"
MOTO_STAMP="$MOTO_VENV/.headwater-moto-lock"   # holds the sha256 of the lock file the venv was built from
MOTO_LOG="$MOTO_HOME/moto.log"
MOTO_PID="$MOTO_HOME/moto.pid"

KAFKA_START_TIMEOUT=${HEADWATER_KAFKA_START_TIMEOUT:-60}
PROM_START_TIMEOUT=${HEADWATER_PROMETHEUS_START_TIMEOUT:-30}
MOTO_START_TIMEOUT=${HEADWATER_MOTO_START_TIMEOUT:-30}
STOP_TIMEOUT=30

ALL_SERVICES=(postgres kafka prometheus moto)

# ---- helpers --------------------------------------------------------------------------------------------
say() { printf 'services.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
rel() { printf '%s' "${1#"$REPO_ROOT"/}"; }

# fail_service NAME LOG MESSAGE: print the tail of the log and exit non-zero
fail_service() {
    local name=$1 log=$2 msg=$3
    say "ERROR: $name failed to start: $msg"
    if [[ -f $log ]]; then
        say "last 30 lines of $(rel "$log"):"
        tail -n 30 "$log" >&2 || true
    fi
    exit 1
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

is_root() { [[ $(id -u) == 0 ]]; }

# pid_alive PIDFILE MARKER: the pid in PIDFILE is running and its command line contains MARKER
pid_alive() {
    local pidfile=$1 marker=$2 pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"
}

# launched_alive PIDFILE: the process we just launched still exists. While starting, only liveness is checked:
# right after `setsid ... &` the child can still be the forked shell (its cmdline not yet the service's), so the
# cmdline marker of pid_alive would report a healthy start as "exited".
launched_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pid NAME PIDFILE MARKER: TERM the process we started, KILL after STOP_TIMEOUT seconds
stop_pid() {
    local name=$1 pidfile=$2 marker=$3 pid i
    if ! pid_alive "$pidfile" "$marker"; then
        rm -f "$pidfile"
        echo "$name: not running"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) did not stop in ${STOP_TIMEOUT}s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
    echo "$name: stopped"
}

# rotate LOG: keep the previous run's log as LOG.1 so each start's log is short and relevant
rotate() { [[ -s $1 ]] && mv -f "$1" "$1.1"; : >"$1"; }

deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }

# ---- apt (only when something is missing) ---------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    (($# > 0)) || return 0
    is_root || die "missing packages ($*): run as root or install them with apt-get"
    local created_policy=0 rc=0
    # our own instances replace the distro services: keep apt from starting them
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    mkdir -p "$SERVICES_DIR"
    say "installing with apt-get: $* (log: $(rel "$SERVICES_DIR/apt.log"))"
    {
        if ((APT_UPDATED == 0)); then
            DEBIAN_FRONTEND=noninteractive apt-get update -q && APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
    } >>"$SERVICES_DIR/apt.log" 2>&1 || rc=$?
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc != 0)); then
        tail -n 30 "$SERVICES_DIR/apt.log" >&2 || true
        die "apt-get install $* failed (exit $rc)"
    fi
    # belt and braces: the distro units must not run (we start our own on other ports)
    if command -v systemctl >/dev/null; then
        for unit in prometheus postgresql; do
            systemctl disable --now "$unit" >/dev/null 2>&1 || true
        done
    fi
}

packages_needed() {
    local svc
    local -a pkgs=()
    for svc in "$@"; do
        case $svc in
        postgres)
            [[ -x $PG_BIN/postgres && -x $PG_BIN/initdb && -x $PG_BIN/psql ]] || pkgs+=(postgresql "postgresql-$PG_MAJOR")
            [[ -f $PG_LIB/wal2json.so ]] || pkgs+=("postgresql-$PG_MAJOR-wal2json")
            ;;
        kafka)
            if [[ ! -f $KAFKA_STAMP ]]; then
                command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
                command -v mvn >/dev/null || pkgs+=(maven)
            fi
            ;;
        prometheus)
            [[ -x $PROM_BIN ]] || pkgs+=(prometheus)
            ;;
        moto)
            if ! moto_venv_current; then
                command -v python3 >/dev/null || pkgs+=(python3)
                moto_python_has_venv || pkgs+=(python3-venv)
            fi
            ;;
        esac
    done
    ((${#pkgs[@]} == 0)) || printf '%s\n' "${pkgs[@]}"
}

# ---- postgres -------------------------------------------------------------------------------------------
PG_BASE=""
pg_as() { # 9>&-: the server must not inherit (and so hold) our lock file
    if is_root; then (cd / && runuser -u postgres -- "$@" 9>&-); else "$@" 9>&-; fi
}

# The cluster lives in .services/postgres. If the postgres user cannot reach that directory (a repo under a
# private home) or the unix socket path would be too long, it lives in /var/tmp and .services/postgres
# is a symlink to it.
pg_resolve_base() {
    if [[ -L $PG_LINK ]]; then
        PG_BASE=$(readlink -f "$PG_LINK")
    else
        PG_BASE=$PG_LINK
    fi
}

pg_prepare_base() {
    pg_resolve_base
    if [[ -L $PG_LINK ]]; then
        mkdir -p "$PG_BASE"
    else
        mkdir -p "$PG_LINK"
        is_root && chown postgres:postgres "$PG_LINK"
        local sock_path="$PG_LINK/sock/.s.PGSQL.$PG_PORT"
        if ! pg_as test -w "$PG_LINK" -a -x "$PG_LINK" || ((${#sock_path} > 100)); then
            [[ -z $(ls -A "$PG_LINK") ]] || die "postgres cannot use $PG_LINK (unreachable for the postgres user) and it is not empty"
            local alt
            alt="/var/tmp/headwater-services-$(printf '%s' "$REPO_ROOT" | cksum | cut -d' ' -f1)/postgres"
            say "postgres: $(rel "$PG_LINK") is not usable by the postgres user; using $alt (symlinked)"
            rmdir "$PG_LINK"
            mkdir -p "$alt"
            chmod 755 "$(dirname "$alt")"
            ln -s "$alt" "$PG_LINK"
            PG_BASE=$alt
        fi
    fi
    mkdir -p "$PG_BASE/sock"
    is_root && chown postgres:postgres "$PG_BASE" "$PG_BASE/sock"
    [[ ! -e $PG_BASE/postgres.log ]] || ! is_root || chown postgres:postgres "$PG_BASE/postgres.log"
    return 0
}

# our postmaster: the pid in postmaster.pid is alive and was started with -D <our data dir> (a stale or
# copied postmaster.pid whose pid now belongs to another process does not count)
pg_running() {
    pg_resolve_base
    local pid
    [[ -f $PG_BASE/data/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$PG_BASE/data/postmaster.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-D $PG_BASE/data"
}

pg_psql() {
    PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U postgres "$@"
}

# A data dir that is not a complete cluster owned by us (e.g. copied or checked out from git, which drops
# empty directories and ownership) is moved aside and a new cluster is made: the data is test data.
pg_check_cluster() {
    local data="$PG_BASE/data" d
    [[ -e $data ]] || return 0
    local broken=""
    for d in global base pg_wal pg_xact pg_tblspc pg_replslot pg_logical/snapshots pg_logical/mappings pg_snapshots \
        pg_stat pg_notify pg_serial pg_twophase pg_commit_ts pg_dynshmem pg_subtrans pg_multixact/members; do
        [[ -d $data/$d ]] || broken="missing $d"
    done
    [[ -f $data/PG_VERSION ]] || broken="missing PG_VERSION"
    if [[ -z $broken ]] && is_root && [[ $(stat -c %U "$data") != postgres ]]; then broken="not owned by postgres"; fi
    if [[ -z $broken ]] && [[ $(stat -c %a "$data") != 700 && $(stat -c %a "$data") != 750 ]]; then
        broken="mode $(stat -c %a "$data")"
    fi
    [[ -n $broken ]] || return 0
    local aside
    aside="$data.broken-$(date +%Y%m%d%H%M%S)"
    say "postgres: $(rel "$PG_LINK")/data is not a usable cluster ($broken); moving it to $(basename "$aside") and running initdb"
    mv "$data" "$aside"
}

pg_write_conf() {
    cat >"$PG_BASE/data/headwater.conf" <<EOF
# written by scripts/services.sh on every start; edit the script, not this file
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_BASE/sock'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
fsync = off
# synchronous_commit stays ON on purpose: logical decoding (pg_logical_slot_get_changes and the walsender)
# only returns WAL that has been flushed, so with it off a just-committed change is invisible to CDC for up
# to 3 x wal_writer_delay (measured: 0 changes right after commit, all after 1 s). With fsync off a commit's
# flush is only a write(), so this costs little; bulk loaders may SET synchronous_commit = off per session.
synchronous_commit = on
full_page_writes = off
max_connections = 100
EOF
    is_root && chown postgres:postgres "$PG_BASE/data/headwater.conf"
    grep -qxF "include 'headwater.conf'" "$PG_BASE/data/postgresql.conf" ||
        printf "\ninclude 'headwater.conf'\n" >>"$PG_BASE/data/postgresql.conf"
}

pg_start() {
    local log
    pg_prepare_base
    log="$PG_BASE/postgres.log"
    if pg_running; then
        port_open "$HOST" "$PG_PORT" ||
            fail_service postgres "$log" "our cluster is running but not on $HOST:$PG_PORT (port changed? run 'stop' first)"
        say "postgres: already running on $HOST:$PG_PORT"
    else
        ! port_open "$HOST" "$PG_PORT" ||
            fail_service postgres "$log" "port $HOST:$PG_PORT is already in use by another process"
        pg_check_cluster
        if [[ ! -f $PG_BASE/data/PG_VERSION ]]; then
            say "postgres: initdb in $(rel "$PG_LINK")/data"
            rm -rf "$PG_BASE/data"
            pg_as touch "$log"
            pg_as "$PG_BIN/initdb" -D "$PG_BASE/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync \
                >>"$log" 2>&1 || fail_service postgres "$log" "initdb failed"
        fi
        pg_write_conf
        pg_as "$PG_BIN/pg_ctl" -D "$PG_BASE/data" -l "$log" -w -t 60 start >/dev/null 2>&1 ||
            fail_service postgres "$log" "pg_ctl start failed"
        say "postgres: started on $HOST:$PG_PORT"
    fi
    if [[ $(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'headwater'" 2>>"$log") != 1 ]]; then
        pg_psql -d postgres -c "CREATE DATABASE headwater" >>"$log" 2>&1 ||
            fail_service postgres "$log" "could not create database headwater"
    fi
    [[ $(pg_psql -d headwater -tAc "SHOW wal_level" 2>>"$log") == logical ]] ||
        fail_service postgres "$log" "wal_level is not logical"
}

pg_stop() {
    if pg_running; then
        pg_as "$PG_BIN/pg_ctl" -D "$PG_BASE/data" -m fast -w -t "$STOP_TIMEOUT" stop >/dev/null
        echo "postgres: stopped"
    else
        echo "postgres: not running"
    fi
}

pg_status() {
    local wal ver
    if pg_running && port_open "$HOST" "$PG_PORT" &&
        wal=$(pg_psql -d headwater -tAc "SHOW wal_level" 2>/dev/null) &&
        ver=$(pg_psql -d headwater -tAc "SHOW server_version" 2>/dev/null); then
        local w2j="wal2json missing"
        [[ -f $PG_LIB/wal2json.so ]] && w2j="wal2json $(deb_version "postgresql-$PG_MAJOR-wal2json")"
        echo "postgres: up $HOST:$PG_PORT (PostgreSQL ${ver%% *}, deb $(deb_version "postgresql-$PG_MAJOR"), $w2j, wal_level=$wal)"
        [[ $wal == logical && -f $PG_LIB/wal2json.so ]]
    else
        echo "postgres: down $HOST:$PG_PORT"
        return 1
    fi
}

# ---- kafka ----------------------------------------------------------------------------------------------
kafka_write_pom() {
    cat >"$KAFKA_HOME/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by scripts/services.sh: the Apache Kafka broker and its runtime dependencies -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.headwater</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$KAFKA_SCALA</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- kafka_2.13's POM brings log4j-api/core and slf4j-api 1.7 but no binding between them -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

kafka_ensure_libs() {
    [[ -f $KAFKA_STAMP ]] && return 0
    mkdir -p "$KAFKA_HOME"
    local log="$KAFKA_HOME/maven.log"
    rm -rf "$KAFKA_LIBS.tmp"
    if [[ -f $KAFKA_CACHE/.complete ]]; then
        say "kafka: copying cached broker jars from $KAFKA_CACHE"
        cp -a "$KAFKA_CACHE" "$KAFKA_LIBS.tmp"
        rm -f "$KAFKA_LIBS.tmp/.complete"
    else
        say "kafka: resolving org.apache.kafka:kafka_$KAFKA_SCALA:$KAFKA_VERSION with Maven (log: $(rel "$log"))"
        kafka_write_pom
        mvn -B -q -f "$KAFKA_HOME/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
            -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" >"$log" 2>&1 ||
            fail_service kafka "$log" "Maven could not resolve the broker jars"
        # machine-wide copy so another clone (CI) skips Maven; best effort
        if mkdir -p "$(dirname "$KAFKA_CACHE")" 2>/dev/null; then
            rm -rf "$KAFKA_CACHE.tmp" &&
                cp -a "$KAFKA_LIBS.tmp" "$KAFKA_CACHE.tmp" && touch "$KAFKA_CACHE.tmp/.complete" &&
                rm -rf "$KAFKA_CACHE" && mv "$KAFKA_CACHE.tmp" "$KAFKA_CACHE" || true
        fi
    fi
    [[ -f $KAFKA_LIBS.tmp/kafka_$KAFKA_SCALA-$KAFKA_VERSION.jar ]] ||
        fail_service kafka "$log" "kafka_$KAFKA_SCALA-$KAFKA_VERSION.jar missing after resolution"
    rm -rf "$KAFKA_LIBS"
    mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
    touch "$KAFKA_STAMP"
}

kafka_write_config() {
    mkdir -p "$KAFKA_HOME/config" "$KAFKA_DATA"
    cat >"$KAFKA_HOME/config/server.properties" <<EOF
# written by scripts/services.sh on every start; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
    cat >"$KAFKA_HOME/config/log4j2.properties" <<'EOF'
status = warn
name = headwater-kafka
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

KAFKA_JVM=(java -Xmx512m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$KAFKA_HOME/config/log4j2.properties" -cp "$KAFKA_LIBS/*")

kafka_running() { pid_alive "$KAFKA_PID" "$KAFKA_HOME/config/server.properties"; }

KAFKA_LAUNCHED=0
kafka_launch() {
    if kafka_running; then
        grep -qF "listeners=PLAINTEXT://$HOST:$KAFKA_PORT," "$KAFKA_HOME/config/server.properties" ||
            fail_service kafka "$KAFKA_LOG" "our broker is running but not on $HOST:$KAFKA_PORT (port changed? run 'stop' first)"
        say "kafka: already running (pid $(cat "$KAFKA_PID"))"
        return 0
    fi
    rm -f "$KAFKA_PID"
    ! port_open "$HOST" "$KAFKA_PORT" ||
        fail_service kafka "$KAFKA_LOG" "port $HOST:$KAFKA_PORT is already in use by another process"
    ! port_open "$HOST" "$KAFKA_CONTROLLER_PORT" ||
        fail_service kafka "$KAFKA_LOG" "controller port $HOST:$KAFKA_CONTROLLER_PORT is already in use by another process"
    kafka_write_config
    rotate "$KAFKA_LOG"
    if [[ ! -f $KAFKA_DATA/meta.properties ]]; then
        local cid
        # A cluster id is 16 random bytes in URL-safe base64. Like Kafka's own Uuid.randomUuid, never one that
        # starts with "-": 1 in 64 would, and the format command would read it as an option.
        cid=$(python3 -c 'import base64,os
while True:
    cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not cid.startswith("-"):
        break
print(cid)' 2>/dev/null || "${KAFKA_JVM[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
        [[ -n $cid ]] || fail_service kafka "$KAFKA_LOG" "could not make a cluster id (python3 and the Kafka jars both failed)"
        "${KAFKA_JVM[@]}" kafka.tools.StorageTool format "--cluster-id=$cid" -c "$KAFKA_HOME/config/server.properties" \
            --ignore-formatted >>"$KAFKA_LOG" 2>&1 || fail_service kafka "$KAFKA_LOG" "formatting storage failed"
    fi
    # setsid: own session, so the broker outlives this script and its terminal; $! is the java pid.
    # 9>&-: it must not inherit (and so hold) our lock file
    setsid "${KAFKA_JVM[@]}" kafka.Kafka "$KAFKA_HOME/config/server.properties" >>"$KAFKA_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$KAFKA_PID"
    KAFKA_LAUNCHED=1
}

kafka_wait() {
    ((KAFKA_LAUNCHED)) || return 0
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        launched_alive "$KAFKA_PID" || fail_service kafka "$KAFKA_LOG" "the broker process exited"
        if port_open "$HOST" "$KAFKA_PORT" && grep -q "Kafka Server started" "$KAFKA_LOG"; then
            say "kafka: started $KAFKA_VERSION on $HOST:$KAFKA_PORT (pid $(cat "$KAFKA_PID"))"
            return 0
        fi
        sleep 0.25
    done
    fail_service kafka "$KAFKA_LOG" "not ready on $HOST:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s (still running as pid $(cat "$KAFKA_PID"); 'stop' ends it)"
}

kafka_python() {
    if [[ -x $REPO_ROOT/.venv/bin/python ]]; then echo "$REPO_ROOT/.venv/bin/python"; else command -v python3; fi
}

# a real produce/consume round trip through the broker (kafka-python)
KAFKA_ROUNDTRIP_PY='
import sys, uuid, logging
logging.disable(logging.CRITICAL)
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
bs, topic = sys.argv[1], "headwater-services-status"
admin = KafkaAdminClient(bootstrap_servers=bs, request_timeout_ms=10000)
try:
    admin.create_topics([NewTopic(topic, 1, 1)])
except TopicAlreadyExistsError:
    pass
admin.close()
token = uuid.uuid4().hex.encode()
producer = KafkaProducer(bootstrap_servers=bs, acks="all", request_timeout_ms=10000, max_block_ms=15000)
meta = producer.send(topic, token).get(timeout=15)
producer.close()
consumer = KafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, consumer_timeout_ms=10000)
tp = TopicPartition(topic, meta.partition)
consumer.assign([tp])
consumer.seek(tp, meta.offset)
ok = any(m.value == token for m in consumer)
consumer.close()
sys.exit(0 if ok else 3)
'

kafka_status() {
    if ! kafka_running || ! port_open "$HOST" "$KAFKA_PORT"; then
        echo "kafka: down $HOST:$KAFKA_PORT"
        return 1
    fi
    local py out
    py=$(kafka_python)
    if ! "$py" -c 'import kafka' 2>/dev/null; then
        echo "kafka: up $HOST:$KAFKA_PORT (Apache Kafka $KAFKA_VERSION; port only: kafka-python not installed in $py)"
        return 0
    fi
    if out=$(timeout 60 "$py" -c "$KAFKA_ROUNDTRIP_PY" "$HOST:$KAFKA_PORT" 2>&1); then
        echo "kafka: up $HOST:$KAFKA_PORT (Apache Kafka $KAFKA_VERSION from Maven Central, produce/consume ok)"
    else
        echo "kafka: down $HOST:$KAFKA_PORT (process up but produce/consume round trip failed: $(tail -n 1 <<<"$out"))"
        return 1
    fi
}

# ---- prometheus -----------------------------------------------------------------------------------------
# Prometheus always runs with $PROM_HOME/prometheus.yml. Each `start` writes it (and alerts.yml beside it) from
# cluster/prometheus/ when the repo has that directory, with the self-scrape target set to our port, so relative
# paths (alerts.yml, targets/*.json for file_sd) resolve under $PROM_HOME; a running instance is then reloaded
# (POST /-/reload, --web.enable-lifecycle), so it picks up changed rules and scrape jobs without a restart.
PROM_TARGETS="$PROM_HOME/targets"   # file_sd: tests write one JSON file per metrics endpoint to scrape here
PROM_CONFIG="$PROM_HOME/prometheus.yml"
prom_config() { echo "$PROM_CONFIG"; }

prom_write_config() {
    local repo_config=$REPO_ROOT/cluster/prometheus
    mkdir -p "$PROM_HOME/data" "$PROM_TARGETS"
    if [[ -f $repo_config/prometheus.yml ]]; then
        sed "s/127\.0\.0\.1:19090/$HOST:$PROM_PORT/" "$repo_config/prometheus.yml" >"$PROM_CONFIG.tmp"
        [[ ! -f $repo_config/alerts.yml ]] || cp "$repo_config/alerts.yml" "$PROM_HOME/alerts.yml"
    else
        cat >"$PROM_CONFIG.tmp" <<EOF
# written by scripts/services.sh (no cluster/prometheus/prometheus.yml in the repo)
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['$HOST:$PROM_PORT']
EOF
    fi
    mv -f "$PROM_CONFIG.tmp" "$PROM_CONFIG"
}

prom_running() { pid_alive "$PROM_PID" "$PROM_HOME/data"; }

prom_ready() { curl -fsS -m 2 "http://$HOST:$PROM_PORT/-/ready" >/dev/null 2>&1; }

prom_start() {
    mkdir -p "$PROM_HOME/data"
    if prom_running; then
        pid_alive "$PROM_PID" "--web.listen-address=$HOST:$PROM_PORT " ||
            fail_service prometheus "$PROM_LOG" "our instance is running but not on $HOST:$PROM_PORT (port changed? run 'stop' first)"
        pid_alive "$PROM_PID" "--config.file=$PROM_CONFIG " ||
            fail_service prometheus "$PROM_LOG" "our instance runs with another config file than $(rel "$PROM_CONFIG") (run 'stop' first)"
        prom_write_config
        curl -fsS -m 10 -X POST "http://$HOST:$PROM_PORT/-/reload" >/dev/null ||
            fail_service prometheus "$PROM_LOG" "reloading $(rel "$PROM_CONFIG") failed (see the log)"
        say "prometheus: already running (pid $(cat "$PROM_PID")); reloaded $(rel "$PROM_CONFIG")"
        return 0
    fi
    rm -f "$PROM_PID"
    ! port_open "$HOST" "$PROM_PORT" ||
        fail_service prometheus "$PROM_LOG" "port $HOST:$PROM_PORT is already in use by another process"
    prom_write_config
    local config=$PROM_CONFIG
    rotate "$PROM_LOG"
    setsid "$PROM_BIN" --config.file="$config" --web.listen-address="$HOST:$PROM_PORT" \
        --storage.tsdb.path="$PROM_HOME/data" --storage.tsdb.retention.time=2d --web.enable-lifecycle \
        >>"$PROM_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$PROM_PID"
    local deadline=$((SECONDS + PROM_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        launched_alive "$PROM_PID" || fail_service prometheus "$PROM_LOG" "the process exited"
        if prom_ready; then
            say "prometheus: started on $HOST:$PROM_PORT with $(rel "$config") (pid $(cat "$PROM_PID"))"
            return 0
        fi
        sleep 0.25
    done
    fail_service prometheus "$PROM_LOG" "/-/ready did not answer on $HOST:$PROM_PORT after ${PROM_START_TIMEOUT}s"
}

prom_status() {
    if prom_running && prom_ready; then
        echo "prometheus: up $HOST:$PROM_PORT (deb prometheus $(deb_version prometheus), config $(rel "$(prom_config)"))"
    else
        echo "prometheus: down $HOST:$PROM_PORT"
        return 1
    fi
}

# ---- moto (local Kinesis) -------------------------------------------------------------------------------
moto_python() {
    local candidate
    for candidate in python3.11 python3.12 python3; do
        if command -v "$candidate" >/dev/null; then command -v "$candidate"; return 0; fi
    done
    return 1
}

moto_python_has_venv() { local py; py=$(moto_python) && "$py" -c 'import venv, ensurepip' 2>/dev/null; }

moto_lock_sum() { sha256sum "$MOTO_LOCK" | cut -d' ' -f1; }

# the venv exists and was built from the current lock file
moto_venv_current() { [[ -x $MOTO_BIN && -f $MOTO_STAMP && $(cat "$MOTO_STAMP") == "$(moto_lock_sum)" ]]; }

moto_ensure_venv() {
    moto_venv_current && return 0
    [[ -f $MOTO_LOCK ]] || die "moto: $(rel "$MOTO_LOCK") is missing"
    mkdir -p "$MOTO_HOME"
    local log="$MOTO_HOME/pip.log" py
    py=$(moto_python) || die "moto: no python3 found"
    say "moto: installing $(rel "$MOTO_LOCK") into $(rel "$MOTO_VENV") (log: $(rel "$log"))"
    # built in place (a venv cannot be moved); the stamp is written last, so an interrupted install is redone.
    # --no-deps: the lock holds every transitive dependency, so pip resolves nothing on its own
    rm -rf "$MOTO_VENV"
    { "$py" -m venv "$MOTO_VENV" &&
        "$MOTO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$MOTO_LOCK"; } \
        >"$log" 2>&1 || fail_service moto "$log" "pip could not install $(rel "$MOTO_LOCK")"
    "$MOTO_BIN" --help >/dev/null 2>&1 || fail_service moto "$log" "$(rel "$MOTO_BIN") does not run after installation"
    moto_lock_sum >"$MOTO_STAMP"
}

moto_running() { pid_alive "$MOTO_PID" "$MOTO_BIN"; }

# a real Kinesis call (ListStreams) answered by the server; moto routes it by the credential scope
moto_ready() {
    curl -fsS -m 3 -X POST "http://$HOST:$MOTO_PORT/" \
        -H 'Content-Type: application/x-amz-json-1.1' -H 'X-Amz-Target: Kinesis_20131202.ListStreams' \
        -H 'Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0' \
        -d '{}' 2>/dev/null | grep -q StreamNames
}

moto_start() {
    mkdir -p "$MOTO_HOME"
    if moto_running; then
        pid_alive "$MOTO_PID" "-p $MOTO_PORT " ||
            fail_service moto "$MOTO_LOG" "our server is running but not on $HOST:$MOTO_PORT (port changed? run 'stop' first)"
        say "moto: already running (pid $(cat "$MOTO_PID"))"
        return 0
    fi
    rm -f "$MOTO_PID"
    ! port_open "$HOST" "$MOTO_PORT" ||
        fail_service moto "$MOTO_LOG" "port $HOST:$MOTO_PORT is already in use by another process"
    moto_ensure_venv
    rotate "$MOTO_LOG"
    setsid "$MOTO_BIN" -H "$HOST" -p "$MOTO_PORT" >>"$MOTO_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$MOTO_PID"
    local deadline=$((SECONDS + MOTO_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        launched_alive "$MOTO_PID" || fail_service moto "$MOTO_LOG" "the process exited"
        if moto_ready; then
            say "moto: started $(moto_version) on $HOST:$MOTO_PORT (pid $(cat "$MOTO_PID"))"
            return 0
        fi
        sleep 0.25
    done
    fail_service moto "$MOTO_LOG" "Kinesis ListStreams did not answer on $HOST:$MOTO_PORT after ${MOTO_START_TIMEOUT}s"
}

moto_version() { sed -n 's/^moto==\(.*\)$/moto \1/p' "$MOTO_LOCK"; }

moto_status() {
    if moto_running && moto_ready; then
        echo "moto: up $HOST:$MOTO_PORT ($(moto_version) from $(rel "$MOTO_LOCK"), Kinesis ListStreams ok)"
    else
        echo "moto: down $HOST:$MOTO_PORT"
        return 1
    fi
}

# ---- commands -------------------------------------------------------------------------------------------
take_lock() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$SERVICES_DIR/.lock"
    if ! flock -n 9; then
        say "waiting for another services.sh to finish (lock $(rel "$SERVICES_DIR/.lock"))"
        flock -w 600 9 || die "another services.sh held the lock for 600s"
    fi
}

has() { local x; for x in "${SERVICES[@]}"; do [[ $x == "$1" ]] && return 0; done; return 1; }

cmd_start() {
    take_lock
    local t0=$SECONDS
    local -a pkgs
    mapfile -t pkgs < <(packages_needed "${SERVICES[@]}")
    apt_install "${pkgs[@]}"
    if has kafka; then
        kafka_ensure_libs
        kafka_launch # the JVM boots while the others start
    fi
    if has postgres; then pg_start; fi
    if has prometheus; then prom_start; fi
    if has moto; then moto_start; fi
    if has kafka; then kafka_wait; fi
    say "ready in $((SECONDS - t0))s: ${SERVICES[*]} (env: source scripts/services.env)"
}

cmd_stop() {
    take_lock
    if has moto; then stop_pid moto "$MOTO_PID" "$MOTO_BIN"; fi
    if has prometheus; then stop_pid prometheus "$PROM_PID" "$PROM_HOME/data"; fi
    if has kafka; then stop_pid kafka "$KAFKA_PID" "$KAFKA_HOME/config/server.properties"; fi
    if has postgres; then pg_stop; fi
}

cmd_status() {
    local rc=0
    if has postgres; then pg_status || rc=1; fi
    if has kafka; then kafka_status || rc=1; fi
    if has prometheus; then prom_status || rc=1; fi
    if has moto; then moto_status || rc=1; fi
    return $rc
}

usage() {
    echo "usage: $0 start|stop|status [postgres|kafka|prometheus|moto ...]" >&2
    exit 2
}

(($# >= 1)) || usage
CMD=$1
shift
if (($# == 0)); then SERVICES=("${ALL_SERVICES[@]}"); else SERVICES=("$@"); fi
for s in "${SERVICES[@]}"; do
    case $s in postgres | kafka | prometheus | moto) ;; *) usage ;; esac
done
case $CMD in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
restart)
    cmd_stop
    cmd_start
    ;;
*) usage ;;
esac
