#!/usr/bin/env bash
# A local image registry on loopback for berth's tests (Debian's docker-registry).
#
#   hack/registry.sh start        [--dir DIR] [--port PORT]
#   hack/registry.sh stop         [--dir DIR]
#   hack/registry.sh status       [--dir DIR] [--port PORT]
#   hack/registry.sh push-images  [--dir DIR] [--port PORT]
#   hack/registry.sh mirrors MDIR [--dir DIR] [--port PORT]
#   hack/registry.sh port         [--dir DIR]
#
#   start        serve on 127.0.0.1:PORT, config/storage/log/PID file in DIR;
#                waits until /v2/ answers (30 s); no-op when already running.
#                Without --port: 5000 when it is free, else a free port the
#                kernel picks (another one if a process takes it first); the
#                port is recorded in DIR/port for the other commands
#   stop         kill the recorded PID (only if it is docker-registry), wait for
#                it to exit, remove DIR
#   status       print the state; exit 0 when running and answering, else 1
#   push-images  build the critest/bench images and push them into the running
#                registry: $SHARED/testimages/build-and-push.sh 127.0.0.1:PORT
#                (environment passes through: LARGE_MIB=0 skips the 150 MiB
#                image, ONLY=REGEX, OUT=DIR; see testimages/README.md); prints
#                one summary line, or everything with VERBOSE=1
#   mirrors MDIR write containerd-style MDIR/HOST/hosts.toml for registry.k8s.io,
#                k8s.gcr.io, gcr.io, docker.io, public.ecr.aws and 127.0.0.1:PORT,
#                all served by http://127.0.0.1:PORT
#   port         print the port recorded in DIR by `start`; exit 1 if none
#
# Defaults: DIR=/tmp/berth-registry; PORT=the port recorded in DIR by `start`
# (else, for `start` see above, for the others 5000).  Files in DIR:
# config.yml, storage/, registry.log, registry.pid, port.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=/tmp/berth-registry
PORT=
START_TIMEOUT=30
DEFAULT_PORT=5000
# How often `start` picks another free port when the one it picked was taken
# between its check and the registry's bind.
START_ATTEMPTS=5
MIRROR_HOSTS=(registry.k8s.io k8s.gcr.io gcr.io docker.io public.ecr.aws)

[ $# -ge 1 ] || usage
CMD=$1
shift
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || usage; DIR=$2; shift 2 ;;
        --dir=*) DIR=${1#--dir=}; shift ;;
        --port) [ $# -ge 2 ] || usage; PORT=$2; [ -n "$PORT" ] || usage; shift 2 ;;
        --port=*) PORT=${1#--port=}; [ -n "$PORT" ] || usage; shift ;;
        -h | --help) usage 0 ;;
        -*) note "unknown option: $1"; usage ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [ -z "$DIR" ] || [ "$DIR" = / ]; then
    die "bad --dir: '$DIR'"
fi
PIDFILE=$DIR/registry.pid
LOG=$DIR/registry.log

# recorded_port: the port DIR records (written by `start`); fails if none.
recorded_port() {
    local port
    port=$(cat "$DIR/port" 2>/dev/null) || return 1
    [[ $port =~ ^[0-9]+$ ]] || return 1
    echo "$port"
}

# use_port PORT: the port the commands below talk to.
use_port() {
    PORT=$1
    if ! [[ $PORT =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
        die "bad port: $PORT"
    fi
    ADDR=127.0.0.1:$PORT
    URL=http://$ADDR
}

# PORT_GIVEN: --port was given, so `start` takes exactly that port.
PORT_GIVEN=
if [ -n "$PORT" ]; then
    PORT_GIVEN=1
    use_port "$PORT"
else
    use_port "$(recorded_port || echo "$DEFAULT_PORT")"
fi

no_args() {
    [ ${#ARGS[@]} -eq 0 ] || { note "unexpected argument: ${ARGS[0]}"; usage; }
}

answers() {
    curl -fs --max-time 2 -o /dev/null "$URL/v2/"
}

# recorded_pid: print the PID from the PID file if that process is a
# docker-registry; fail otherwise.
recorded_pid() {
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    proc_is "$pid" docker-registry || return 1
    echo "$pid"
}

show_log() {
    if [ -s "$LOG" ]; then
        echo "--- $LOG (last 40 lines):" >&2
        tail -n 40 "$LOG" >&2
    fi
}

# wait_gone PID SECONDS: wait until PID exited (or is a zombie); fail on timeout.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while proc_is "$pid" docker-registry; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# wait_reaped PID SECONDS: the exited registry is an orphan, so its zombie stays
# until init reaps it (this VM's init does so only every ~2 s); wait for that,
# so that `pgrep docker-registry` is empty after `stop`.  Best effort.
wait_reaped() {
    local pid=$1 deadline=$((SECONDS + $2)) stat
    while stat=$(cat "/proc/$pid/stat" 2>/dev/null); do
        # Field 3 (after "pid (comm)") is the state; a recycled PID is not Z.
        stat=${stat##*) }
        [ "${stat%% *}" = Z ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || return 0
        sleep 0.1
    done
}

kill_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 10; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "docker-registry pid $pid does not exit"
    fi
    wait_reaped "$pid" 5
}

# port_busy: something answers or listens on $PORT.
port_busy() {
    answers || [ -n "$(ss -Hltn "sport = :$PORT" 2>/dev/null)" ]
}

# free_port: a loopback port nobody listens on now, picked by the kernel.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# listens_on_port PID: process PID itself listens on $PORT (not another
# registry that won the port a moment earlier).
listens_on_port() {
    ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -q "pid=$1,"
}

# bind_lost: the registry's log says another process holds its port.
bind_lost() {
    grep -q "address already in use" "$LOG" 2>/dev/null
}

cmd_start() {
    no_args
    command -v docker-registry >/dev/null || die "docker-registry not found (apt-get install docker-registry, or hack/install.sh)"
    command -v curl >/dev/null || die "curl not found"
    local pid attempt=1
    if pid=$(recorded_pid); then
        local running_port
        running_port=$(recorded_port || echo "?")
        [ -z "$PORT_GIVEN" ] || [ "$running_port" = "$PORT" ] ||
            die "a registry from $DIR is already running (pid $pid) on port $running_port, not $PORT"
        use_port "$running_port"
        # Started by a concurrent `start` a moment ago: wait for it.
        answers || wait_answering "$pid" || die "docker-registry pid $pid does not answer on $URL/v2/"
        return 0
    fi
    if [ -n "$PORT_GIVEN" ]; then
        ! port_busy || die "port $PORT on 127.0.0.1 is already in use by another process"
    else
        use_port "$DEFAULT_PORT"
        if port_busy; then
            use_port "$(free_port)"
        fi
    fi
    while :; do
        spawn_registry
        wait_answering "$REGISTRY_PID" && return 0
        # An automatic port another process took between the check and the
        # registry's bind: pick another.
        if [ -n "$PORT_GIVEN" ] || ! bind_lost || [ "$attempt" -ge "$START_ATTEMPTS" ]; then
            die "docker-registry did not start on $URL"
        fi
        note "port $PORT was taken before the registry bound it; trying another"
        attempt=$((attempt + 1))
        use_port "$(free_port)"
    done
}

# spawn_registry: write the config for $ADDR and the port file, start
# docker-registry in the background; its PID goes to REGISTRY_PID.
spawn_registry() {
    rm -f "$PIDFILE"
    mkdir -p "$DIR/storage"
    cat >"$DIR/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: $ADDR
EOF
    echo "$PORT" >"$DIR/port"
    # setsid: out of the caller's process group, so the registry outlives
    # the calling shell's job; it runs in the background forked child
    # (not a group leader), so setsid execs without another fork and $! is
    # the registry's PID.
    setsid docker-registry serve "$DIR/config.yml" </dev/null >"$LOG" 2>&1 &
    REGISTRY_PID=$!
    echo "$REGISTRY_PID" >"$PIDFILE"
}

# wait_answering PID: wait until the registry PID answers on $URL/v2/; when
# it exits or does not answer in time, show its log and fail.
wait_answering() {
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
    # Answering is not enough: a concurrent start may have bound the same
    # automatic port first, and its registry would answer for ours.
    until answers && listens_on_port "$pid"; do
        if ! kill -0 "$pid" 2>/dev/null || [ -z "$(tr -d '\0' <"/proc/$pid/cmdline" 2>/dev/null)" ]; then
            show_log
            rm -f "$PIDFILE"
            note "docker-registry exited before answering on $URL/v2/"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log
            proc_is "$pid" docker-registry && kill_pid "$pid"
            rm -f "$PIDFILE"
            note "docker-registry did not answer on $URL/v2/ within $START_TIMEOUT s"
            return 1
        fi
        sleep 0.1
    done
    proc_is "$pid" docker-registry ||
        { show_log; rm -f "$PIDFILE"; die "docker-registry pid $pid is gone; who answers on $URL?"; }
}

cmd_port() {
    no_args
    recorded_port || die "no port recorded in $DIR (not started?)"
}

cmd_stop() {
    no_args
    local pid
    if pid=$(recorded_pid); then
        kill_pid "$pid"
    elif [ -f "$PIDFILE" ]; then
        note "stale PID file $PIDFILE (pid $(cat "$PIDFILE") is not a docker-registry); not killing it"
    fi
    # Remove DIR only when it is ours (made by `start`).
    if [ -d "$DIR" ]; then
        if [ -f "$DIR/config.yml" ] || [ -f "$PIDFILE" ]; then
            rm -rf "$DIR"
        else
            note "$DIR does not look like a registry dir made by '$PROG start'; not removing it"
        fi
    fi
}

cmd_status() {
    no_args
    local pid
    if pid=$(recorded_pid); then
        if answers; then
            echo "running: pid $pid, $URL, dir $DIR"
            return 0
        fi
        echo "not answering on $URL/v2/: pid $pid, dir $DIR (port $(cat "$DIR/port" 2>/dev/null || echo '?'))"
        return 1
    fi
    echo "not running (dir $DIR)"
    return 1
}

cmd_push_images() {
    no_args
    local script=$SHARED/testimages/build-and-push.sh
    [ -x "$script" ] || [ -f "$script" ] || die "$script not found (set BERTH_SHARED to the shared directory)"
    answers || die "no registry answers on $URL/v2/ (run: $PROG start --port $PORT)"
    if [ -n "${VERBOSE:-}" ]; then
        bash "$script" "$ADDR"
        return
    fi
    local log rc=0
    log=$(mktemp "${TMPDIR:-/tmp}/berth-push.XXXXXX")
    bash "$script" "$ADDR" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$log" >&2
        rm -f "$log"
        die "$script $ADDR failed (exit $rc)"
    fi
    # One line: "N images in REGISTRY", and where the list of names went.
    grep -E '^[0-9]+ images in ' "$log" | tr '\n' ' ' || true
    echo "(list: ${OUT:-${TMPDIR:-/tmp}/cri-testimages}/images.txt)"
    rm -f "$log"
}

cmd_mirrors() {
    [ ${#ARGS[@]} -eq 1 ] || { note "mirrors takes one directory"; usage; }
    local mdir=${ARGS[0]} host file content
    content="server = \"$URL\"

[host.\"$URL\"]
  capabilities = [\"pull\", \"resolve\"]"
    for host in "${MIRROR_HOSTS[@]}" "$ADDR"; do
        file=$mdir/$host/hosts.toml
        if [ -f "$file" ] && [ "$(cat "$file")" = "$content" ]; then
            continue
        fi
        mkdir -p "$mdir/$host"
        printf '%s\n' "$content" >"$file.tmp"
        mv -f "$file.tmp" "$file"
    done
}

case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    push-images) cmd_push_images ;;
    mirrors) cmd_mirrors ;;
    port) cmd_port ;;
    -h | --help | help) usage 0 ;;
    *) note "unknown command: $CMD"; usage ;;
esac
