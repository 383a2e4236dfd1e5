"""TLS server blocks read from `nginx -T` output: what a restored nginx must serve."""

from __future__ import annotations

from drkit.sources.nginxconf import TlsServer, tls_servers

DUMP = """\
nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
# configuration file /etc/nginx/nginx.conf:
events { worker_connections 768; }
http {
    include /etc/nginx/sites-enabled/*;
# configuration file /etc/nginx/sites-enabled/e2i-app:
    limit_req_zone $binary_remote_addr zone=api:10m rate=10r/s;
    server {
        listen 80;
        server_name eznomics.example.test;
        return 301 https://$host$request_uri;
    }
    server {
        listen 443 ssl http2;
        listen [::]:443 ssl http2;
        server_name eznomics.example.test www.eznomics.example.test;  # both
        ssl_certificate /etc/letsencrypt/live/eznomics.example.test/fullchain.pem;
        ssl_certificate_key "/etc/letsencrypt/live/eznomics.example.test/privkey.pem";
        location / {
            proxy_pass http://127.0.0.1:8000;
            add_header X-Frame-Options "SAMEORIGIN; {not a block}";
        }
    }
    server {
        listen 127.0.0.1:8443 ssl;
        server_name _ ~^api\\d+\\.example\\.test$ *.wild.example.test api.example.test;
        ssl_certificate /etc/ssl/api.pem;
    }
    server {
        listen 443 ssl;
        server_name nocert.example.test;
    }
}
"""


def test_tls_servers_with_names_ports_and_certificates() -> None:
    assert tls_servers(DUMP) == [
        TlsServer(
            ("eznomics.example.test", "www.eznomics.example.test"),
            443,
            "/etc/letsencrypt/live/eznomics.example.test/fullchain.pem",
        ),
        TlsServer(("api.example.test",), 8443, "/etc/ssl/api.pem"),
    ]


def test_nothing_to_probe_without_tls_servers() -> None:
    assert tls_servers("") == []
    assert tls_servers("http { server { listen 80; server_name a.example.test; } }") == []


# What `nginx -T` really prints: the main file, then every included file on its own
# after a "# configuration file" line, its server blocks at that file's top level.
REAL = """\
# configuration file /etc/nginx/nginx.conf:
user www-data;
events {
    worker_connections 768;
}
http {
    include /etc/nginx/mime.types;
    include /etc/nginx/sites-enabled/*;
}

# configuration file /etc/nginx/mime.types:
types {
    text/html html htm;
}

# configuration file /etc/nginx/sites-enabled/e2i-app:
server {
    listen 80;
    server_name eznomics.example.test;
    return 301 https://$host$request_uri;
}
server {
    listen 443 ssl; # managed by Certbot
    server_name eznomics.example.test;
    ssl_certificate /etc/letsencrypt/live/eznomics.example.test/fullchain.pem; # managed by Certbot
    include /etc/letsencrypt/options-ssl-nginx.conf;
}

# configuration file /etc/letsencrypt/options-ssl-nginx.conf:
ssl_session_cache shared:le_nginx_SSL:10m;
ssl_protocols TLSv1.2 TLSv1.3;
"""


def test_server_blocks_of_included_files_as_nginx_T_prints_them() -> None:
    assert tls_servers(REAL) == [
        TlsServer(
            ("eznomics.example.test",),
            443,
            "/etc/letsencrypt/live/eznomics.example.test/fullchain.pem",
        )
    ]
