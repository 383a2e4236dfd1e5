#!/bin/bash
# stack-up.sh [DIR]: bring the test stack up in this container's own engine.
#
# stdin: `docker save` of the drkit base image, and/or of the stack's images
# built outside from stack/*/Dockerfile (tests do that once per machine: the
# builds are then cached, and nothing is built in here). Each loaded image
# labelled org.drkit.stack-image=REF is tagged REF; the base (org.drkit.kind=base
# without that label) is tagged drkit-base, which the Dockerfiles build FROM
# when `docker-compose up` has to build a missing image here.
# Copies /opt/drkit/stack to DIR (default /srv/shop, so the compose project is
# "shop"), starts it, waits until the app's /health answers, then writes data:
# a table of rows in PostgreSQL, keys in Redis, a file in the uploads bind
# mount. Also starts one standalone container ("sessions": Redis, named
# volume sessions-data). Output of compose: /var/log/drkit/stack-build.log.
set -euo pipefail
dir=${1:-/srv/shop}
log=/var/log/drkit/stack-build.log

loaded=$(docker load | sed -n 's/^Loaded image: //p')
[ -n "$loaded" ] || { echo "stack-up: no image on stdin (docker save ...)" >&2; exit 1; }
for image in $loaded; do
    ref=$(docker image inspect --format '{{index .Config.Labels "org.drkit.stack-image"}}' "$image")
    kind=$(docker image inspect --format '{{index .Config.Labels "org.drkit.kind"}}' "$image")
    if [ -n "$ref" ]; then
        docker tag "$image" "$ref"
    elif [ "$kind" = base ]; then
        docker tag "$image" drkit-base:latest
    fi
done

mkdir -p "$dir"
cp -a /opt/drkit/stack/. "$dir/"
mkdir -p "$dir/uploads"
cd "$dir"
if ! docker-compose up -d >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    exit 1
fi
for _ in $(seq 1500); do
    curl -fsS http://127.0.0.1:8080/health >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS http://127.0.0.1:8080/health

docker-compose exec -T db psql -q -v ON_ERROR_STOP=1 -d shop -c \
    "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);
     INSERT INTO orders (item) SELECT 'item-' || g FROM generate_series(1, 25) g;"
docker-compose exec -T cache redis-cli SET cart:1 three-items >/dev/null
docker-compose exec -T cache redis-cli SET cart:2 one-item >/dev/null
curl -fsS -X PUT --data-binary 'an uploaded file' http://127.0.0.1:8080/uploads/first.txt

docker run -d --name sessions -v sessions-data:/data --user redis shop/cache:1 >/dev/null
echo "stack-up: ready"
