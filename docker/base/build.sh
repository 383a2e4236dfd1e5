#!/usr/bin/env bash
# Builds drkit's Debian 12 base image without a container registry:
#   debootstrap --variant=minbase bookworm ROOTFS MIRROR
#   tar -C ROOTFS -c . | docker import - drkit-base:<hash>
#
# MIRROR is the Debian mirror this machine's own apt already uses (read from
# /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}); no host
# is hard-coded. DRKIT_DEBIAN_MIRROR overrides it (e.g. on an Ubuntu machine,
# whose apt has no Debian mirror). The image's apt sources are the machine's
# bookworm entries (bookworm, bookworm-updates, bookworm-security, ...), so
# `apt-get install` inside `docker build` uses the same mirrors.
#
# <hash> is a content hash of this script, the mirror and those sources: the
# image is rebuilt only when one of them changes.
#
# Usage: build.sh            build unless drkit-base:<hash> exists
#        build.sh --tag-only print the tag, build nothing
# Last stdout line: "drkit-base:<hash> built" or "drkit-base:<hash> cached".
# Progress goes to stderr. Needs root (debootstrap) and a running engine.
set -euo pipefail

SUITE=bookworm
VARIANT=minbase
REPO=drkit-base

say() { echo "drkit-base: $*" >&2; }
die() { say "error: $*"; exit 1; }

# "URI SUITE COMPONENTS..." for every enabled binary (deb) entry of apt's sources.
apt_entries() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # One-line format: deb [options] URI SUITE COMPONENT...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 {
            line = $2 " " $3; for (i = 4; i <= NF; i++) line = line " " $i; print line }'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822 format: stanzas separated by blank lines; fields may span lines.
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no")
                    for (u = 1; u <= nu; u++) for (s = 1; s <= ns; s++)
                        print uris[u] " " suites[s] (comps == "" ? "" : " " comps)
                types = ""; enabled = ""; comps = ""; nu = 0; ns = 0; field = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            /^[A-Za-z-]+:/ {
                field = tolower(substr($0, 1, index($0, ":") - 1))
                value = substr($0, index($0, ":") + 1)
            }
            /^[[:space:]]+[^[:space:]]/ { value = $0 }
            {
                n = split(value, parts, /[[:space:]]+/)
                for (i = 1; i <= n; i++) {
                    if (parts[i] == "") continue
                    if (field == "types") types = types " " parts[i]
                    else if (field == "uris") uris[++nu] = parts[i]
                    else if (field == "suites") suites[++ns] = parts[i]
                    else if (field == "components") comps = (comps == "" ? parts[i] : comps " " parts[i])
                    else if (field == "enabled") enabled = parts[i]
                }
                value = ""
            }
            END { flush() }
        ' "$f"
    done
}

entries=$(apt_entries | awk -v s="$SUITE" '$2 == s || index($2, s "-") == 1' | awk '!seen[$0]++')
if [ -n "${DRKIT_DEBIAN_MIRROR:-}" ]; then
    mirror=$DRKIT_DEBIAN_MIRROR
    entries="$mirror $SUITE main"
else
    mirror=$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$entries")
    [ -n "$mirror" ] || die "no '$SUITE' entry in this machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/); set DRKIT_DEBIAN_MIRROR to a Debian mirror URI"
fi
sources_list=$(awk '{ print "deb " $0 }' <<<"$entries")

hash=$( { cat "$0"; printf '%s\n' "$SUITE" "$VARIANT" "$mirror" "$sources_list"; } | sha256sum | cut -c1-12)
tag="$REPO:$hash"

if [ "${1:-}" = "--tag-only" ]; then
    echo "$tag"
    exit 0
fi

image_exists() { docker image inspect "$tag" >/dev/null 2>&1; }

# Two drills starting at once build the image once.
exec 9>"${TMPDIR:-/tmp}/drkit-base-build.lock"
flock 9
if image_exists; then
    echo "$tag cached"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/docker-setup.sh"

rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/drkit-base.XXXXXX")
cleanup() {
    # debootstrap mounts proc/sys inside the target; a failed run may leave
    # them mounted, and rm must never walk into them.
    awk -v r="$rootfs" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

say "debootstrap --variant=$VARIANT $SUITE from $mirror"
if ! debootstrap --variant="$VARIANT" "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    tail -n 30 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    die "debootstrap failed (mirror $mirror)"
fi
rm -f "$rootfs.log"

# What the official Debian images do: services are not started by package
# scripts during image builds, apt drops downloaded .debs and installs no
# recommends, docs and translations are not unpacked (vfs copies every layer
# in full, so every MB counts several times).
# dpkg fsyncs every file it unpacks: without this, installing a host's
# packages took 3 min instead of 1.5 (an interrupted build is thrown away anyway).
echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/90drkit-unsafe-io"
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"
cat >"$rootfs/etc/apt/apt.conf.d/90drkit" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Acquire::Languages "none";
EOF
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90drkit-excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
printf '%s\n' "$sources_list" >"$rootfs/etc/apt/sources.list"
# Package lists are fetched again by every build's apt-get update; lists/partial
# stays, owned by _apt, so apt can drop privileges when downloading.
find "$rootfs/var/lib/apt/lists" -mindepth 1 -maxdepth 1 ! -name partial ! -name lock -exec rm -rf {} +
chroot "$rootfs" install -d -o _apt -g root -m 700 /var/lib/apt/lists/partial
rm -f "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
# Docker provides these per container.
rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
: >"$rootfs/etc/machine-id"

# mktemp made the directory 0700; it becomes the image's "/", which every
# service user must be able to traverse.
chmod 755 "$rootfs"

say "importing as $tag"
tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.drkit.kind=base org.drkit.mirror=$mirror" \
    - "$tag" >/dev/null
echo "$tag built"
