"""The one script ``drkit discover`` runs on a host: read-only, POSIX sh, one round trip.

It prints sections, each introduced by a line ``@@drkit-discover <name> [<arg>]``
followed by the raw output of one command (``docker inspect`` JSON, ``ps``,
``pg_lsclusters``, a compose file...). Nothing is parsed on the host, so the
parsing (``drkit/discover/facts.py``) is plain Python tested on recorded
outputs, and the host needs nothing beyond sh, coreutils and the tools it
already runs. Commands that need root run through ``sudo -n`` when the login
user is not root (and are skipped, with the error in their section, when
sudo asks for a password). What the script reads: Docker's container and
volume metadata, compose files, the process list, PostgreSQL's database
names and sizes, MySQL/MariaDB database names, Redis' keyspace line, PM2
dump app names and paths (``grep -o`` on name/cwd/script keys only: the
dumps hold environments, which never leave the host), Caddyfiles, the names
in certificate stores and nginx's ``server_name`` lines, and the paths (never
the contents) of ``.env`` files.
"""

from __future__ import annotations

MARKER = "@@drkit-discover"

# Directories searched for compose files and .env files (find -maxdepth 4).
ROOTS = ("/root", "/home", "/opt", "/srv", "/var/www", "/app")

SCRIPT = r"""
M='@@drkit-discover'
sec() { printf '\n%s %s\n' "$M" "$*"; }
if [ "$(id -u)" = 0 ]; then root() { "$@"; }; else root() { sudo -n "$@"; }; fi
have() { command -v "$1" >/dev/null 2>&1; }
ROOTS='__ROOTS__'
SERVERS='nats-server|caddy|nginx: master|PM2 v|postgres -D|/postgres( |$)'
SERVERS="$SERVERS|mysqld|mariadbd|redis-server"
PGLIST='select datname, pg_database_size(datname) from pg_database where not datistemplate'
LABEL='com.docker.compose.project'

sec whoami; id -un; hostname

sec ps
ps -eo pid=,user=,args= 2>&1 | grep -E "$SERVERS|dockerd" | grep -v grep
sec containerized
# A process in a container: its cgroup names one, and not the one this script runs in
# (when the host is itself a container, its own services share the script's cgroup).
me=$(grep -m1 -E 'docker|containerd|kubepods|libpod' /proc/$$/cgroup 2>/dev/null)
for pid in $(ps -eo pid=,args= | grep -E "$SERVERS" | grep -v grep | awk '{print $1}'); do
    cg=$(root cat "/proc/$pid/cgroup" 2>/dev/null | grep -m1 -E 'docker|containerd|kubepods|libpod')
    [ -z "$cg" ] || [ "$cg" = "$me" ] || echo "$pid $cg"
done

if have docker; then
    sec docker-version; root docker version --format '{{.Server.Version}}' 2>&1
    ids=$(root docker ps -aq 2>/dev/null)
    sec docker-containers
    if [ -n "$ids" ]; then root docker inspect $ids 2>&1; else echo '[]'; fi
    vols=$(root docker volume ls -q 2>/dev/null)
    sec docker-volumes
    if [ -n "$vols" ]; then root docker volume inspect $vols 2>&1; else echo '[]'; fi
    for id in $(root docker ps -q 2>/dev/null); do
        name=$(root docker inspect --format '{{.Name}}' "$id" 2>/dev/null | sed 's,^/,,')
        what=$(root docker inspect --format '{{.Config.Image}} {{.Path}} {{join .Args " "}}' "$id" \
            2>/dev/null; root docker top "$id" -eo pid,args 2>/dev/null | tail -n +2)
        case "$what" in
        *postgres*|*supabase*|*pgvector*|*timescale*)
            sec container-postgres "$name"
            root docker exec -e PGLIST="$PGLIST" "$id" sh -c '
                for u in "${POSTGRES_USER:-postgres}" postgres supabase_admin; do
                    psql -X -U "$u" -d postgres -Atc "$PGLIST" 2>/dev/null && exit 0
                done; exit 1' 2>&1 ;;
        esac
        case "$what" in
        *mysql*|*mariadb*)
            sec container-mysql "$name"
            root docker exec "$id" sh -c '
                c=$(command -v mariadb || command -v mysql)
                p=${MYSQL_ROOT_PASSWORD:-${MARIADB_ROOT_PASSWORD:-}}
                MYSQL_PWD=$p "$c" -uroot -N -e "show databases" 2>&1' 2>&1 ;;
        esac
        case "$what" in
        *redis*|*falkordb*|*valkey*|*keydb*|*dragonfly*)
            sec container-redis "$name"
            root docker exec "$id" sh -c '
                c=$(command -v redis-cli || command -v valkey-cli || command -v keydb-cli)
                "$c" INFO keyspace 2>&1; "$c" CONFIG GET dir 2>&1' 2>&1 ;;
        esac
    done
    F="{{index .Config.Labels \"$LABEL.working_dir\"}}"
    F="$F|{{index .Config.Labels \"$LABEL.config_files\"}}"
    [ -n "$ids" ] && root docker inspect --format "$F" $ids 2>/dev/null | sort -u |
        while IFS='|' read -r wd files; do
            [ -n "$files" ] || continue
            echo "$files" | tr ',' '\n' | while read -r file; do
                case "$file" in /*) echo "$file" ;; *) echo "$wd/$file" ;; esac
            done
        done | sort -u | while read -r f; do
            sec compose-file "$f"; root head -c 200000 "$f" 2>&1
        done
fi
sec compose-files-found
for r in $ROOTS; do
    root find "$r" -maxdepth 4 -type f \( -name 'docker-compose*.yml' \
        -o -name 'docker-compose*.yaml' -o -name 'compose.yml' -o -name 'compose.yaml' \) \
        -not -path '*/node_modules/*' 2>/dev/null
done | sort -u

if have pg_lsclusters; then
    sec pg-clusters; pg_lsclusters -h 2>&1
    pg_lsclusters -h 2>/dev/null | while read -r ver cl port status _rest; do
        case "$status" in online*) ;; *) continue ;; esac
        sec pg-databases "$ver $cl $port"
        if [ "$(id -u)" = 0 ]; then
            runuser -u postgres -- psql -X -p "$port" -d postgres -Atc "$PGLIST" 2>&1
        else
            sudo -n -u postgres psql -X -p "$port" -d postgres -Atc "$PGLIST" 2>&1
        fi
    done
fi

sec pm2
for d in /root/.pm2 /home/*/.pm2 ${PM2_HOME:-}; do
    [ -n "$d" ] && root test -f "$d/dump.pm2" 2>/dev/null || continue
    echo "@home $d $(root stat -c %U "$d" 2>/dev/null)"
    root grep -oE '"(name|pm_cwd|pm_exec_path)": *"[^"]*"' "$d/dump.pm2" 2>/dev/null
done

for f in /etc/caddy/Caddyfile; do
    [ -f "$f" ] || continue
    sec caddyfile "$f"; root head -c 200000 "$f" 2>&1
done
for d in /var/lib/caddy/.local/share/caddy /root/.local/share/caddy; do
    root test -d "$d/certificates" 2>/dev/null || continue
    sec caddy-certs "$d"
    for issuer in $(root ls -1 "$d/certificates" 2>/dev/null); do
        root ls -1 "$d/certificates/$issuer"
    done
done
if [ -d /etc/nginx ]; then
    sec nginx
    root grep -rhoE '^[[:space:]]*server_name[^;]*;' /etc/nginx/sites-enabled /etc/nginx/conf.d \
        2>/dev/null
fi
if root test -d /etc/letsencrypt/live 2>/dev/null; then
    sec certbot; root ls -1 /etc/letsencrypt/live 2>/dev/null | grep -v README
fi

sec env-files
for r in $ROOTS; do
    root find "$r" -maxdepth 4 -type f \( -name '.env' -o -name '*.env' -o -name '.env.*' \) \
        -not -path '*/node_modules/*' -not -name '*.example' -not -name '*.sample' \
        -not -name '*.template' 2>/dev/null
done | sort -u
sec end
""".replace("__ROOTS__", " ".join(ROOTS))
