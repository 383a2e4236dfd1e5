# Sourced by scripts/setup.sh and scripts/docker-setup.sh: run apt-get once no other
# process holds apt's or dpkg's lock (unattended-upgrades on a fresh machine,
# another setup run, a person's apt), waiting for it a bounded time and saying
# who holds it, instead of failing at once with "Could not get lock".
#
#   apt_get ARGS...     wait_for_apt_lock, then apt-get ARGS (with sudo when not root)
#
# DRKIT_APT_LOCK_WAIT: seconds to wait (default 300). The holder is found in
# /proc/locks (apt and dpkg take fcntl locks), so no extra tool is needed.

APT_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock
           /var/cache/apt/archives/lock)
APT_LOCK_WAIT=${DRKIT_APT_LOCK_WAIT:-300}

# "pid PID (COMMAND) on LOCK" for a process holding one of APT_LOCKS, or nothing.
apt_lock_holder() {
    local lock dev inode pid
    for lock in "${APT_LOCKS[@]}"; do
        [ -e "$lock" ] || continue
        # /proc/locks names a file as MAJOR:MINOR:INODE, the device numbers in hex.
        dev=$(stat -c '%Hd %Ld' "$lock" 2>/dev/null) || continue
        dev=$(printf '%02x:%02x' $dev)
        inode=$(stat -c '%i' "$lock") || continue
        pid=$(awk -v id="$dev:$inode" '$2 != "->" && $6 == id { print $5; exit }' /proc/locks)
        if [ -n "$pid" ] && [ "$pid" -gt 0 ] 2>/dev/null; then
            echo "pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo gone)) on $lock"
            return 0
        fi
    done
}

# Returns once no process holds an apt/dpkg lock; 1 after APT_LOCK_WAIT seconds.
wait_for_apt_lock() {
    local waited=0 holder me
    me=$(basename "$0" .sh)
    while holder=$(apt_lock_holder) && [ -n "$holder" ]; do
        if [ "$waited" -ge "$APT_LOCK_WAIT" ]; then
            echo "$me: apt is still locked by $holder after ${APT_LOCK_WAIT} s; run this again" \
                "when it is done (DRKIT_APT_LOCK_WAIT=SECONDS waits longer)" >&2
            return 1
        fi
        if [ $((waited % 30)) -eq 0 ]; then
            echo "$me: waiting for apt, locked by $holder (${waited} s of at most" \
                "${APT_LOCK_WAIT} s)" >&2
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

apt_get() {
    local sudo="" attempt err rc
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    err=$(mktemp)
    for attempt in 1 2 3 4 5 6; do
        wait_for_apt_lock || { rm -f "$err"; return 1; }
        # apt's own wait covers dpkg's lock taken between our check and apt-get
        # starting; it does not cover the lists lock of another `apt-get update`
        # started in that same instant, so that failure is retried.
        rc=0
        $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get -o "DPkg::Lock::Timeout=$APT_LOCK_WAIT" "$@" 2>"$err" || rc=$?
        cat "$err" >&2
        if [ "$rc" -eq 0 ] || ! grep -q "Could not get lock" "$err"; then
            rm -f "$err"
            return "$rc"
        fi
        echo "$(basename "$0" .sh): apt was locked as it started (try $attempt); waiting" >&2
        sleep 3
    done
    rm -f "$err"
    return "$rc"
}
