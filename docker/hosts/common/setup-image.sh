#!/bin/sh
# Runs once inside `docker build`, after the host's packages are installed:
# the parts every drkit host image shares. Kept in the same RUN as apt-get so
# the image stays one layer over its base (vfs copies every layer in full).
#
# - trusts the extra CA bundle passed in the build context (build-ca.crt,
#   empty when none was given; see docker/README.md "Extra CA bundle");
# - configures sshd for key-only logins without PAM, host keys made per
#   container by the entrypoint (never baked into the image);
# - makes PostgreSQL listen on the container's interface (reached only through
#   ports published on 127.0.0.1) with password auth for TCP;
# - generates en_US.UTF-8 when `locales` is installed, because restoring a
#   database created with that collation needs it on the target;
# - installs the entrypoint, `drkit-svc` (start/stop/restart services
#   without systemd) and `drkit-engine` (the container's own Docker engine,
#   used only in images that install docker.io).
set -eu
here=/opt/drkit

# --- extra CA bundle: add only the certificates the image does not trust yet.
if [ -s "$here/build-ca.crt" ]; then
    [ -f /etc/ssl/certs/ca-certificates.crt ] || { echo "setup-image: install ca-certificates before an extra CA bundle" >&2; exit 1; }
    mkdir -p /usr/local/share/ca-certificates/drkit-build-ca
    awk -v out=/usr/local/share/ca-certificates/drkit-build-ca '
        FNR == 1 { file++ }
        /-----BEGIN CERTIFICATE-----/ { block = ""; inside = 1 }
        inside { block = block $0 "\n" }
        /-----END CERTIFICATE-----/ && inside {
            inside = 0
            if (file == 1) known[block] = 1
            else if (!(block in known)) { known[block] = 1; n++; printf "%s", block > (out "/extra-" n ".crt") }
        }
        END { print n + 0 " extra CA certificate(s)" > "/dev/stderr" }
    ' /etc/ssl/certs/ca-certificates.crt "$here/build-ca.crt"
    update-ca-certificates >/dev/null
fi
rm -f "$here/build-ca.crt"

# --- sshd
if [ -x /usr/sbin/sshd ]; then
    rm -f /etc/ssh/ssh_host_*
    mkdir -p /etc/ssh/sshd_config.d /run/sshd
    # Debian's sshd_config includes sshd_config.d first, and the first value wins.
    # UsePAM no: pam_loginuid fails in containers without CAP_AUDIT_CONTROL.
    cat >/etc/ssh/sshd_config.d/00-drkit.conf <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
EOF
fi

# --- PostgreSQL (Debian's package made a cluster at install time)
for conf in /etc/postgresql/*/*/postgresql.conf; do
    [ -f "$conf" ] || continue
    dir=$(dirname "$conf")
    mkdir -p "$dir/conf.d"
    echo "listen_addresses = '*'" >"$dir/conf.d/00-drkit.conf"
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >>"$dir/pg_hba.conf"
done

# --- locales
if [ -f /etc/locale.gen ]; then
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
    locale-gen >/dev/null
fi

install -m 755 "$here/entrypoint.sh" /usr/local/sbin/drkit-entrypoint
install -m 755 "$here/drkit-svc" /usr/local/sbin/drkit-svc
install -m 755 "$here/drkit-engine" /usr/local/sbin/drkit-engine
mkdir -p /var/log/drkit
