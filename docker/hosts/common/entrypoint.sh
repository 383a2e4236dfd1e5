#!/bin/bash
# Entry point of every drkit host image (no systemd in a drill container).
#
# 1. Login: DRKIT_SSH_USER (default root; another name is created with
#    passwordless sudo, like a VPS's admin user) gets the public keys from
#    $DRKIT_AUTHORIZED_KEYS and/or a mounted /etc/drkit/authorized_keys.
# 2. With DRKIT_ENGINE=1 (a drill whose policy has Docker-backed sources),
#    starts the container's own Docker engine and the host's containers
#    (drkit-engine); a failure stops the container naming the step and its log.
# 3. Starts each service in $DRKIT_SERVICES (set by the image's Dockerfile)
#    with drkit-svc, in order; the first that fails stops the container with
#    its log tail on stdout (`docker logs`).
# 4. Writes /run/drkit/ready and prints "drkit-entrypoint: ready", then stays
#    in the foreground until the container is stopped (services are stopped
#    cleanly on SIGTERM).
# Given arguments (`docker run IMAGE bash`), it runs them instead.
set -euo pipefail

[ $# -eq 0 ] || exec "$@"

log() { echo "drkit-entrypoint: $*"; }
READY=/run/drkit/ready
mkdir -p /run/drkit
rm -f "$READY"

user=${DRKIT_SSH_USER:-root}
if ! id "$user" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$user"
    # sshd without PAM refuses accounts whose password is locked ("!"):
    # "*" means no password, but not locked.
    usermod -p '*' "$user"
    if [ -d /etc/sudoers.d ]; then
        echo "$user ALL=(ALL) NOPASSWD:ALL" >"/etc/sudoers.d/90-drkit-$user"
        chmod 440 "/etc/sudoers.d/90-drkit-$user"
    fi
    log "created user $user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
keys=$( { printf '%s\n' "${DRKIT_AUTHORIZED_KEYS:-}"; cat /etc/drkit/authorized_keys 2>/dev/null || true; } | grep -v '^[[:space:]]*$' || true)
if [ -n "$keys" ]; then
    install -d -m 700 -o "$user" -g "$(id -gn "$user")" "$home/.ssh"
    printf '%s\n' "$keys" >"$home/.ssh/authorized_keys"
    chown "$user": "$home/.ssh/authorized_keys"
    chmod 600 "$home/.ssh/authorized_keys"
    log "$(wc -l <<<"$keys") authorized key(s) for $user"
else
    log "no authorized keys given (DRKIT_AUTHORIZED_KEYS or /etc/drkit/authorized_keys): ssh logins will fail"
fi

if [ "${DRKIT_ENGINE:-0}" = 1 ]; then
    if ! drkit-engine "$user"; then
        log "the container's own Docker engine did not start (see above)"
        exit 1
    fi
fi

read -r -a services <<<"${DRKIT_SERVICES:-sshd}"
started=()
stop_all() {
    local i
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        drkit-svc stop "${started[$i]}" || true
    done
}
stop_engine() {
    local pid
    pid=$(cat /run/drkit/dockerd.pid 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || true
}
trap 'log stopping; stop_all; stop_engine; exit 0' TERM INT

for service in "${services[@]}"; do
    if ! drkit-svc start "$service"; then
        log "$service did not start; its log:"
        drkit-svc log "$service" || true
        stop_all
        exit 1
    fi
    started+=("$service")
    log "$service started"
done

date -u +%Y-%m-%dT%H:%M:%SZ >"$READY"
log "ready: ${services[*]}"
# A background sleep and `wait` so the TERM trap runs at once.
sleep infinity &
wait $!
