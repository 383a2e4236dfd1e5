#!/usr/bin/env bash
# drills-stamp.sh check|write
#
# `make drills` (the Docker scenario suites beyond vultr, tests/conftest.py
# DRILL_SUITES) is too slow for every CI run on a fresh machine. It runs when
# the files it exercises changed since it last passed: `write` (run by `make
# drills` after it passed) records a digest of those files, in
# .ci/drills.sha256; `check` exits 0 when they are unchanged, 1 when `make
# drills` must run. Uncommitted changes count as changes.
set -euo pipefail
cd "$(dirname "$0")/.."

STAMP=.ci/drills.sha256
# The drill machinery and the scenarios' definitions: images, drill code, drill
# files, shipped policies and the suites themselves (a comment line inside the
# array is fine in bash).
PATHS=(docker drkit/drills drkit/actions/drill.py drkit/cli/commands_drill.py
       restore_drills policies tests/drills tests/e2e/test_postgres_container.py
       tests/conftest.py tests/seeded tests/e2e/test_shipped_visualkit_hetzner.py
       tests/e2e/test_vultr_acceptance.py
       tests/e2e/test_shipped_conversational_platform.py tests/e2e/test_shipped_e2i_droplet.py
       tests/e2e/test_stock_container.py tests/e2e/test_discover.py drkit/discover
       # the live-write and kill tests moved out of make test, and what they test
       tests/sources/test_nats_live.py tests/sources/test_docker_volume.py
       tests/sources/test_pm2_deploy.py drkit/sources/docker_volume.py
       drkit/sources/pm2.py drkit/sources/listening.py 'drkit/sources/nats*'
       drkit/sources/jetstream.py
       # compose, mysql and redis sources end to end on the dockerhost (#18)
       tests/e2e/test_compose.py tests/e2e/test_compose_containers.py
       drkit/sources/compose.py drkit/sources/mysql.py drkit/sources/redis.py
       drkit/sources/sqldump.py drkit/sources/pm2_state.py drkit/sources/tree_listing.py
       # session 12: moved out of make test for CI time, and what they test
       drkit/sources/stop_window.py drkit/sources/redis_rdb.py
       tests/sources/test_compose_stop_window.py tests/sources/test_redis.py
       tests/bench/test_harness_smoke.py 'bench/*.py')

digest() {
    # Path and content (as in the working tree) of every file under PATHS that git
    # tracks or would track: the same digest before and after committing them.
    git ls-files --cached --others --exclude-standard -- "${PATHS[@]}" | LC_ALL=C sort -u |
        while IFS= read -r f; do
            if [ -f "$f" ]; then printf '%s %s\n' "$(git hash-object -- "$f")" "$f"; fi
        done | sha256sum | cut -d' ' -f1
}

case "${1:-}" in
    write) digest >"$STAMP"; echo "drills-stamp: recorded $(cat "$STAMP") in $STAMP (commit it)" ;;
    check)
        if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(digest)" ]; then
            echo "drills-stamp: drill files unchanged since drills last passed"
            exit 0
        fi
        echo "drills-stamp: drill files changed since drills last passed: make drills must run"
        exit 1 ;;
    *) echo "usage: $0 check|write" >&2; exit 2 ;;
esac
