#!/usr/bin/env bash
# Private Docker Engine for Kaisar tests, devnet and single-machine providers.
#
#   scripts/dockerd.sh [start]   start (or reuse) the engine, print `export DOCKER_HOST=...`
#   scripts/dockerd.sh stop      stop the engine this state dir runs (containers stop too)
#   scripts/dockerd.sh status    exit 0 and print DOCKER_HOST if the engine answers
#   scripts/dockerd.sh env       print `export DOCKER_HOST=...` (no start)
#
# Usage in a shell:   eval "$(scripts/dockerd.sh)"
#
# Environment:
#   KAISAR_DOCKER_DIR        state dir (socket, data-root, exec-root, pidfile, log);
#                            default /tmp/kaisar-docker
#   KAISAR_DOCKER_STORAGE    force a storage driver (default: overlay2, then vfs)
#   KAISAR_DOCKER_NETWORK    force the network mode: bridge (default bridge docker0 with
#                            iptables, --icc=false) or none (default: bridge, then none)
#   KAISAR_DOCKER_USERNS     user namespace remapping: default (dockremap) or off
#                            (default: default, then off)
#   KAISAR_DOCKER_WAIT       seconds to wait for the engine to answer (default 30)
#
# Only `export ...` goes to stdout; progress and errors go to stderr, so `eval` is safe.
# Facts measured on the development machines are in docs/CONTAINERS.md.
set -euo pipefail

STATE_DIR="${KAISAR_DOCKER_DIR:-/tmp/kaisar-docker}"
SOCK="$STATE_DIR/docker.sock"
PIDFILE="$STATE_DIR/dockerd.pid"
LOG="$STATE_DIR/dockerd.log"
WAIT_S="${KAISAR_DOCKER_WAIT:-30}"
# The sandbox hard limit is 20000; dockerd/containerd must not ask for more.
NOFILE_MAX=20000

say() { echo "dockerd.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

host_line() { echo "export DOCKER_HOST=unix://$SOCK"; }

# True when the engine on our socket answers /_ping (curl, else the docker CLI).
answers() {
    [ -S "$SOCK" ] || return 1
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s --max-time 2 --unix-socket "$SOCK" http://docker/_ping 2>/dev/null)" = "OK" ]
    else
        DOCKER_HOST="unix://$SOCK" timeout 3 docker version >/dev/null 2>&1
    fi
}

# True when our engine runs in bridge mode but the docker0 interface has disappeared.
bridge_lost() {
    grep -qx 'network=bridge' "$STATE_DIR/engine.env" 2>/dev/null && [ ! -e /sys/class/net/docker0 ]
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && is_dockerd "$pid" && echo "$pid"
}

# True if pid is a live (not zombie) dockerd: pidfiles outlive crashes and pids get reused.
is_dockerd() {
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = dockerd ] && is_alive "$1"
}

# True if pid exists and is not a zombie (kill -0 succeeds on zombies).
is_alive() {
    local state
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)"
    [ -n "$state" ] && [ "$state" != Z ]
}

ensure_installed() {
    command -v dockerd >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "dockerd is missing and we are not root: install docker.io"
    say "dockerd missing: installing docker.io with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q docker.io >&2; then
        apt-get update -q >&2
        apt-get install -y -q docker.io >&2
    fi
    command -v dockerd >/dev/null 2>&1 || die "apt-get installed docker.io but dockerd is still missing"
}

# Start dockerd with one storage driver, network mode (bridge|none) and user namespace
# remapping (default|off); return 0 once it answers, 1 if it died or hung.
try_start() {
    local driver="$1" net="$2" userns="$3"
    local net_flags=(--icc=false --ip=127.0.0.1)
    local userns_flags=()
    # Root in a container maps to an unprivileged host uid range (user dockremap).
    [ "$userns" != off ] && userns_flags=(--userns-remap="$userns")
    if [ "$net" = none ]; then
        # No docker0 and no iptables: containers get only loopback, so published
        # ports cannot work. The runtime refuses to start jobs then (docs/CONTAINERS.md).
        net_flags=(--bridge=none --iptables=false)
    fi
    mkdir -p "$STATE_DIR/data" "$STATE_DIR/exec"
    echo "=== dockerd.sh $(date -u +%FT%TZ) start: storage $driver, network $net, userns $userns" >>"$LOG"
    say "starting dockerd (storage $driver, network $net, userns $userns), log $LOG"
    # setsid+nohup: the engine outlives this script and the shell that ran it.
    # ulimit: containerd raises its soft limit to the hard one; keep both <= 20000.
    (
        exec 9>&- # do not let dockerd inherit (and hold) the start lock
        ulimit -n "$(( $(ulimit -Hn) < NOFILE_MAX ? $(ulimit -Hn) : NOFILE_MAX ))" 2>/dev/null || true
        exec setsid nohup dockerd \
            -H "unix://$SOCK" \
            --data-root "$STATE_DIR/data" \
            --exec-root "$STATE_DIR/exec" \
            --pidfile "$PIDFILE" \
            --storage-driver "$driver" \
            "${net_flags[@]}" \
            ${userns_flags[@]+"${userns_flags[@]}"} \
            --log-level warn \
            >>"$LOG" 2>&1 </dev/null
    ) &
    local launcher=$!
    local deadline=$(( SECONDS + WAIT_S ))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if answers; then
            return 0
        fi
        # The launcher subshell execs dockerd, so its pid is dockerd's pid.
        if ! is_alive "$launcher"; then
            wait "$launcher" 2>/dev/null || true
            say "dockerd ($driver, $net) exited; last log lines:"
            tail -n 5 "$LOG" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    say "dockerd ($driver, $net) did not answer within ${WAIT_S}s; stopping it"
    kill "$launcher" 2>/dev/null || true
    return 1
}

cmd_start() {
    mkdir -p "$STATE_DIR"
    # One starter at a time per state dir (parallel test sessions call this too).
    exec 9>"$STATE_DIR/lock"
    flock -w "$(( WAIT_S * 3 ))" 9 || die "timed out waiting for $STATE_DIR/lock"

    if answers; then
        if bridge_lost; then
            # Another dockerd started with --bridge=none deletes docker0 under us;
            # containers then fail with "could not find bridge docker0".
            say "the engine's bridge docker0 is gone; restarting the engine"
            cmd_stop
        else
            say "reusing the engine on $SOCK"
            host_line
            return 0
        fi
    fi
    local pid
    if pid="$(running_pid)"; then
        # Still starting (or hung): give it the normal wait before judging.
        local deadline=$(( SECONDS + WAIT_S ))
        while [ "$SECONDS" -lt "$deadline" ] && is_dockerd "$pid"; do
            if answers; then host_line; return 0; fi
            sleep 0.2
        done
        die "dockerd pid $pid (from $PIDFILE) runs but does not answer on $SOCK; see $LOG or run '$0 stop'"
    fi
    rm -f "$PIDFILE" "$SOCK"

    ensure_installed
    local drivers
    if [ -n "${KAISAR_DOCKER_STORAGE:-}" ]; then
        drivers="$KAISAR_DOCKER_STORAGE"
    else
        drivers="overlay2 vfs"
    fi
    local nets="${KAISAR_DOCKER_NETWORK:-bridge none}"
    local usernses="${KAISAR_DOCKER_USERNS:-default off}"
    local d n u
    for n in $nets; do
        for d in $drivers; do
            for u in $usernses; do
                if try_start "$d" "$n" "$u"; then
                    printf 'storage_driver=%s\nnetwork=%s\nuserns=%s\n' "$d" "$n" "$u" >"$STATE_DIR/engine.env"
                    [ "$n" = none ] && say "WARNING: no bridge network: job containers cannot publish ports"
                    [ "$u" = off ] && say "WARNING: no user namespace remapping: container root is host root"
                    say "engine ready on $SOCK (storage $d, network $n, userns $u)"
                    host_line
                    return 0
                fi
                rm -f "$PIDFILE" "$SOCK"
            done
        done
    done
    die "could not start dockerd (storage: $drivers; network: $nets; userns: $usernses); see $LOG"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        say "no dockerd running for $STATE_DIR"
        rm -f "$PIDFILE" "$SOCK"
        return 0
    fi
    say "stopping dockerd pid $pid"
    kill -TERM "$pid"
    local deadline=$(( SECONDS + 20 ))
    while is_dockerd "$pid"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "dockerd pid $pid ignored SIGTERM for 20s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$PIDFILE" "$SOCK"
}

cmd_status() {
    if answers; then
        host_line
        return 0
    fi
    say "no engine answers on $SOCK"
    return 1
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) host_line ;;
    -h | --help | help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) die "unknown command '$1' (start|stop|status|env)" ;;
esac
