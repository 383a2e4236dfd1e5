#!/usr/bin/env bash
# Makes a Docker engine available for restore drills on a Debian 12 machine:
# installs docker.io and debootstrap from apt when missing, then, when no
# engine answers and we are root, starts `dockerd --storage-driver=vfs` in the
# background (log in drkit's state dir) and waits for it. Idempotent: an engine
# that already answers is left alone. Prints where the log is.
#
# vfs because it works everywhere (no overlay mounts needed, e.g. inside a
# container or VM without overlayfs); it copies every layer in full, which is
# why drkit's images keep their layers few. DRKIT_DOCKER_STORAGE_DRIVER=overlay2
# picks another driver where the kernel allows it. See docker/README.md.
set -euo pipefail

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need_apt+=(debian-archive-keyring)
if [ ${#need_apt[@]} -gt 0 ]; then
    # apt_get waits (up to DRKIT_APT_LOCK_WAIT, 300 s) for another apt or dpkg to finish.
    source "$(dirname "$0")/apt-lock.sh"
    echo "docker-setup: installing ${need_apt[*]}"
    apt_get update -qq
    # docker.io's postinst tries to start the service; without an init system
    # that only warns, and we start dockerd ourselves below.
    apt_get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Same rule as drkit.paths.state_dir().
state_dir=${DRKIT_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/drkit}
log="$state_dir/docker/dockerd.log"

engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_answers; then
    echo "docker-setup: engine already running ($(docker version --format '{{.Server.Version}}'))"
    exit 0
fi
if [ -n "${DOCKER_HOST:-}" ]; then
    echo "docker-setup: DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "docker-setup: no engine answers and starting dockerd needs root" >&2
    exit 1
fi

# A dockerd that is still alive (per its pid file) may just be starting: give
# it time rather than starting a second one. A socket and pid file left by an
# engine that no longer runs (a machine restored from a disk image, a session
# that ended) are stale: dockerd refuses to start while its pid file names a
# pid, so remove both.
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ]; then
    old_pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$old_pid" ] && [ "$(cat "/proc/$old_pid/comm" 2>/dev/null || true)" = dockerd ]; then
        echo "docker-setup: dockerd (pid $old_pid) runs but does not answer yet; waiting"
        for _ in $(seq 1 120); do
            if engine_answers; then
                echo "docker-setup: engine $(docker version --format '{{.Server.Version}}') ready (pid $old_pid)"
                exit 0
            fi
            sleep 0.5
        done
        echo "docker-setup: dockerd (pid $old_pid) did not answer within 60 s" >&2
        exit 1
    fi
    echo "docker-setup: removing stale $pidfile (pid ${old_pid:-none} is not a running dockerd)"
    rm -f "$pidfile"
fi
if [ -S /var/run/docker.sock ]; then
    echo "docker-setup: removing stale /var/run/docker.sock (no engine behind it)"
    rm -f /var/run/docker.sock
fi

mkdir -p "$(dirname "$log")"
driver=${DRKIT_DOCKER_STORAGE_DRIVER:-vfs}
echo "docker-setup: starting dockerd --storage-driver=$driver (log: $log)"
# setsid + nohup: the engine outlives this script and its terminal.
setsid nohup dockerd --storage-driver="$driver" >>"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 120); do
    if engine_answers; then
        echo "docker-setup: engine $(docker version --format '{{.Server.Version}}') ready (pid $pid, log: $log)"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "docker-setup: dockerd exited; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "docker-setup: dockerd did not answer within 60 s; see $log" >&2
exit 1
