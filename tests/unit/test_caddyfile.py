"""Site names and ports read from Caddyfiles: what a restored Caddy must serve."""

from __future__ import annotations

from drkit.sources.caddyfile import https_port, site_addresses, tls_sites

FULL = """\
# the vultr box, more or less
{
    email ops@example.test
    https_port 8443
    storage file_system {
        root /srv/caddy
    }
}

(common) {
    encode gzip
}

voice.example.test, www.voice.example.test {
    import common
    reverse_proxy 127.0.0.1:8000
    handle /x {
        respond "}" 200   # a quoted brace is not a block
    }
}
db.example.test:443 { reverse_proxy 127.0.0.1:3000 }
http://plain.example.test {
}
:8080 {
}
127.0.0.1 {
}
localhost {
}
https://logs.example.test:9443/path {
}
{$SITE} {
}
"""


def test_site_blocks_not_snippets_options_or_directives() -> None:
    assert site_addresses(FULL) == [
        "voice.example.test",
        "www.voice.example.test",
        "db.example.test:443",
        "http://plain.example.test",
        ":8080",
        "127.0.0.1",
        "localhost",
        "https://logs.example.test:9443/path",
        "{$SITE}",
    ]


def test_tls_sites_keep_names_with_certificates_to_serve_and_their_ports() -> None:
    assert https_port(FULL) == 8443
    assert tls_sites(FULL) == [
        ("voice.example.test", 8443),
        ("www.voice.example.test", 8443),
        ("db.example.test", 443),
        ("logs.example.test", 9443),
    ]


def test_one_site_without_braces_and_files_without_options() -> None:
    text = "example.test\nreverse_proxy 127.0.0.1:3000\nfile_server\n"
    assert tls_sites(text) == [("example.test", 443)]
    assert https_port("a.example.test {\n}\n") == 443
    assert tls_sites("") == [] and tls_sites("{\n  admin off\n}\n") == []
