"""The conversational-platform box as seed 001 describes it, in a container of its image.

At the paths ``policies/conversational-platform.toml`` names (so the shipped policy
backs it up as is), on the host as the seed's bootstrap leaves it (the image: a
``docker`` user with sudo owning /opt/conversational-platform; root SSH login off):

- NATS JetStream with token auth (§Environment Variables Reference: NATS_URL,
  NATS_TOKEN; the container's entrypoint starts nats-server with ``--auth``): the
  stream ``CONVERSATIONS`` (§Operations Runbook > Emergency: Clear NATS Stream) on
  ``conversations.>``, file storage. Its history: a first batch of messages purged
  (the runbook's emergency purge: the stream's first sequence is past 1), then three
  conversations (messages and a completion event each) and one message deleted. Two
  durable pull consumers as the Go API would keep them: ``api-worker`` on the
  messages, some delivered and acked, and ``analytics`` on completion events, one
  acked; so each consumer has a delivered sequence, an ack floor and pending messages
  a restore must bring back;
- /opt/conversational-platform (§Quick Start > 3/5, §Scaling Guide): config/.env made
  with ``cp config/.env.template config/.env`` by the docker user (NATS_TOKEN,
  JWT_SECRET, ANTHROPIC_API_KEY and the optional settings of the reference table),
  the template itself, and docker-compose.prod.yml with the seed's resource limits;
- Caddy: the seed's /etc/caddy/Caddyfile with its placeholders replaced (§Quick
  Start > 4: the API domain and the admin email, here under ``.invalid``), proxying
  to the API on :8080 with ``flush_interval -1`` (§Troubleshooting > SSE) and the
  access log /var/log/caddy/api-access.log (§View Logs); the domain's certificate in
  Caddy's storage; Caddy restarted so it serves it.

The Go API runs in Docker on the host and is not in the image: Caddy answers 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from drkit.drills.container import HostContainer
from tests.seeded.tls import Certificate, make_certificate, served_fingerprints
from tests.seeded.tree import Entry, Tree, caddy_tree, https_status, restart_caddy, write_tree

HOST = "conversational-platform"
USER = "docker"  # the policy's login: the bootstrap's non-root user (root login disabled)
STREAM = "CONVERSATIONS"
DOMAIN = "api.conversational.invalid"
PLATFORM = "/opt/conversational-platform"
ENV_FILE = f"{PLATFORM}/config/.env"
CONFIG_FILES = (f"{PLATFORM}/config/.env.template", f"{PLATFORM}/docker-compose.prod.yml")
NO_BACKEND = 502  # Caddy's answer while the Go API (Docker) is not running
NATS_HEALTH = "http://127.0.0.1:8222/healthz"

CADDYFILE = """\
{{
    email admin@conversational.invalid
}}

{domain} {{
    reverse_proxy localhost:8080 {{
        flush_interval -1
    }}
    log {{
        output file /var/log/caddy/api-access.log
        format json
    }}
}}
"""

ENV_KEYS = (
    "SERVER_PORT",
    "LOG_LEVEL",
    "NATS_URL",
    "NATS_TOKEN",
    "JWT_SECRET",
    "ANTHROPIC_API_KEY",
    "RATE_LIMIT_REQUESTS",
    "RATE_LIMIT_WINDOW",
    "TRACING_ENABLED",
)

COMPOSE = """\
# docker-compose.prod.yml (seed 001 §Scaling Guide > Performance Tuning: limits edited here)
services:
  api:
    build: .
    restart: unless-stopped
    env_file: config/.env
    ports:
      - "127.0.0.1:8080:8080"
    depends_on:
      - nats
    deploy:
      resources:
        limits:
          memory: 1G
          cpus: '2'
    environment:
      - GOMAXPROCS=2
  nats:
    image: nats:2.10
    container_name: nats
    restart: unless-stopped
    command: ["-js", "-sd", "/data", "-m", "8222", "--auth", "${NATS_TOKEN}"]
    ports:
      - "127.0.0.1:4222:4222"
      - "127.0.0.1:8222:8222"
    volumes:
      - /var/lib/platform-data/nats:/data
"""

# The stream's history (see the module doc).
PURGED = 10  # messages published, then purged
CONVERSATIONS = 3
TURNS = 4  # user + assistant message pairs per conversation
WORKER_ACKED = 10  # api-worker messages delivered and acked
ANALYTICS_ACKED = 1


@dataclass
class ConversationalSeed:
    token: str  # NATS_TOKEN: the server's token, also in config/.env
    certificate: Certificate
    files: dict[str, str]  # path -> content (config/.env, the template, the compose file)
    stream: dict[str, int]  # messages, first_seq, last_seq, num_deleted, consumers
    consumers: dict[str, dict[str, Any]]  # name -> consumer_state()

    @property
    def fingerprints(self) -> dict[str, str]:
        return {DOMAIN: self.certificate.sha256}


def _files(token: str) -> dict[str, str]:
    values = {
        "SERVER_PORT": "8080",
        "LOG_LEVEL": "info",
        "NATS_URL": "nats://nats:4222",
        "NATS_TOKEN": token,
        "JWT_SECRET": secrets.token_urlsafe(32),
        "ANTHROPIC_API_KEY": "sk-ant-test-" + secrets.token_hex(16),
        "RATE_LIMIT_REQUESTS": "60",
        "RATE_LIMIT_WINDOW": "1m",
        "TRACING_ENABLED": "false",
    }
    return {
        f"{PLATFORM}/config/.env.template": "".join(f"{k}=\n" for k in ENV_KEYS),
        ENV_FILE: "".join(f"{k}={values[k]}\n" for k in ENV_KEYS),
        f"{PLATFORM}/docker-compose.prod.yml": COMPOSE,
    }


def _tree(files: dict[str, str], certificate: Certificate) -> Tree:
    tree: Tree = {f"{PLATFORM}/config": Entry(None, 0o755, USER)}
    for path, content in files.items():
        tree[path] = Entry(content.encode(), 0o644, USER)  # cp keeps the template's mode
    return tree | caddy_tree(CADDYFILE.format(domain=DOMAIN), [certificate])


T = TypeVar("T")


def with_jetstream(
    box: HostContainer, token: str | None, work: Callable[[JetStreamContext], Awaitable[T]]
) -> T:
    """``work(js)`` on the container's NATS (its published 4222), logged in with ``token``."""

    async def run() -> T:
        url = f"nats://127.0.0.1:{box.port(4222)}"
        nc = await nats.connect(url, token=token, connect_timeout=10, max_reconnect_attempts=0)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


async def _load(js: JetStreamContext) -> None:
    config = StreamConfig(
        name=STREAM, subjects=["conversations.>"], storage=StorageType.FILE, max_age=30 * 86400
    )
    await js.add_stream(config)
    for i in range(PURGED):
        await js.publish(f"conversations.old-{i}.messages", b'{"role":"user","content":"hi"}')
    await js.purge_stream(STREAM)  # the runbook's emergency purge
    for c in range(CONVERSATIONS):
        conv = f"conv-{c:04d}"
        for turn in range(TURNS):
            for role in ("user", "assistant"):
                body = {"conversation": conv, "turn": turn, "role": role, "content": "..."}
                await js.publish(f"conversations.{conv}.messages", json.dumps(body).encode())
        await js.publish(f"conversations.{conv}.completed", json.dumps({"turns": TURNS}).encode())
    info = await js.stream_info(STREAM)
    await js.delete_msg(STREAM, info.state.first_seq + 2)  # one message deleted on request
    for name, subject, acked in (
        ("api-worker", "conversations.*.messages", WORKER_ACKED),
        ("analytics", "conversations.*.completed", ANALYTICS_ACKED),
    ):
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=name, ack_policy=AckPolicy.EXPLICIT, filter_subject=subject
            ),
        )
        sub = await js.pull_subscribe_bind(durable=name, stream=STREAM)
        for msg in await sub.fetch(acked, timeout=10):
            await msg.ack_sync()
        await sub.unsubscribe()


async def _state(js: JetStreamContext) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    info = await js.stream_info(STREAM)
    s = info.state
    stream = {
        "messages": s.messages,
        "first_seq": s.first_seq,
        "last_seq": s.last_seq,
        "num_deleted": s.num_deleted or 0,
        "consumers": s.consumer_count,
    }
    consumers = {}
    for c in await js.consumers_info(STREAM):
        assert c.delivered is not None and c.ack_floor is not None
        consumers[c.name] = {
            "filter_subject": c.config.filter_subject,
            "ack_policy": c.config.ack_policy,
            "delivered": c.delivered.stream_seq,
            "ack_floor": c.ack_floor.stream_seq,
            "num_pending": c.num_pending,
            "num_ack_pending": c.num_ack_pending,
        }
    return stream, consumers


def jetstream_state(
    box: HostContainer, token: str | None
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """(CONVERSATIONS' state, name -> each consumer's filter, delivered and ack floor
    stream sequences and pending counts) on the container's NATS."""
    return with_jetstream(box, token, _state)


def load_conversations(
    box: HostContainer, token: str | None
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Only the JetStream part of the seed: CONVERSATIONS with its history and both
    durable consumers (module doc) on the container's NATS; returns ``jetstream_state``."""
    with_jetstream(box, token, _load)
    return jetstream_state(box, token)


def seed_conversational(box: HostContainer, token: str) -> ConversationalSeed:
    """Seed a fresh container of the image (its NATS started with ``--auth token``) as
    the module doc says; returns what it holds."""
    certificate = make_certificate(DOMAIN, days_left=60)
    files = _files(token)
    write_tree(box, _tree(files, certificate))
    with_jetstream(box, token, _load)
    stream, consumers = jetstream_state(box, token)
    seed = ConversationalSeed(token, certificate, files, stream, consumers)
    assert stream["messages"] == CONVERSATIONS * (2 * TURNS + 1) - 1, stream
    assert stream["first_seq"] == PURGED + 1 and stream["consumers"] == 2, stream
    assert consumers["api-worker"]["ack_floor"] > stream["first_seq"], consumers
    assert consumers["analytics"]["num_pending"] == CONVERSATIONS - ANALYTICS_ACKED, consumers
    restart_caddy(box, seed.fingerprints)
    got, want = serving(box), expected_serving(seed)
    assert got == want, f"the seeded box does not serve what it should:\n{got}\n!=\n{want}"
    return seed


def serving(box: HostContainer) -> dict[str, Any]:
    """NATS monitoring's /healthz (seed 001 §6 Verify), the API site's HTTP status
    through Caddy and the certificate served for it."""
    health = box.exec(["curl", "-s", "-m", "10", NATS_HEALTH], check=False).stdout.decode()
    return {
        "nats": health.strip(),
        "https": https_status(box, [f"https://{DOMAIN}/health"]),
        "certificates": served_fingerprints(box, [DOMAIN]),
    }


def expected_serving(seed: ConversationalSeed) -> dict[str, Any]:
    return {
        "nats": '{"status":"ok"}',
        "https": {f"https://{DOMAIN}/health": NO_BACKEND},
        "certificates": seed.fingerprints,
    }


# ---- a busy platform (tests/drills/test_drill_nats_under_load.py) ---------------------
BULK = 10000  # 4 KB messages: ~40 MB more in CONVERSATIONS, its snapshot takes a while
EVENTS = 5000
KV_BUCKET = "sessions"
KV_KEYS = 40

Message = tuple[str, bytes, dict[str, str]]


async def _grow(js: JetStreamContext) -> None:
    nc = js._nc  # the connection: plain publishes, acknowledged by flush
    for i in range(BULK):
        body = os.urandom(4000)
        await nc.publish(f"conversations.bulk-{i % 50:04d}.messages", body)
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()
    await js.add_stream(
        StreamConfig(name="EVENTS", subjects=["events.>"], storage=StorageType.FILE)
    )
    for i in range(EVENTS):
        await nc.publish(f"events.{i % 5}", b'{"event":%d}' % i)
    await nc.flush()
    kv = await js.create_key_value(bucket=KV_BUCKET, history=5)
    for i in range(200):
        await kv.put(f"user.{i % KV_KEYS}", f"session {i}".encode())
    await js.add_consumer(
        "EVENTS", ConsumerConfig(durable_name="indexer", ack_policy=AckPolicy.EXPLICIT)
    )
    sub = await js.pull_subscribe_bind(durable="indexer", stream="EVENTS")
    for msg in await sub.fetch(100, timeout=10):
        await msg.ack_sync()
    await sub.unsubscribe()


def grow_platform(box: HostContainer, token: str) -> None:
    """What a busy platform adds to the seeded box: CONVERSATIONS grown by BULK messages
    of 4 KB (random: the snapshot's compression gains nothing), a file stream EVENTS
    with a durable consumer ``indexer`` that acked 100, a KV bucket ``sessions``
    (history 5) with 200 updates of 40 keys."""
    with_jetstream(box, token, _grow)


Batch = Callable[[int], list[tuple[str, bytes, dict[str, str] | None]]]


class Publisher(threading.Thread):
    """Writes at a steady rate until stopped: every 10 ms ``per_tick`` rounds of
    ``batch(n)`` (n: messages published so far); every 50 ms an update of a key of the KV
    bucket ``bucket``; every 100 ms fetches and acks up to five messages through each
    durable consumer of ``consumers`` ((stream, name) pairs). Errors are kept in
    ``error`` for the test."""

    def __init__(
        self,
        url: str,
        token: str | None,
        batch: Batch,
        consumers: tuple[tuple[str, str], ...],
        *,
        per_tick: int = 5,
        bucket: str = KV_BUCKET,
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.batch, self.consumers = url, token, batch, consumers
        self.per_tick, self.bucket = per_tick, bucket
        self.halt = threading.Event()
        self.running = threading.Event()
        self.published = self.acked = self.kv_updates = 0
        self.seconds = 0.0
        self.error: BaseException | None = None

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds else 0.0

    def during(self, work: Callable[[], T], lead: float = 0.0) -> T:
        """``work()`` while this publisher writes: it starts first (``lead`` seconds
        more) and stops 0.5 s after; AssertionError if it failed, acked or updated
        nothing."""
        self.start()
        try:
            assert self.running.wait(30) or self.error, "the publisher did not start"
            assert self.error is None, self.error
            time.sleep(lead)
            result = work()
            time.sleep(0.5)
        finally:
            self.halt.set()
            self.join(60)
        assert not self.is_alive(), "the publisher did not stop"
        assert self.error is None, self.error
        assert self.acked > 0 and self.kv_updates > 0, vars(self)
        return result

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.running.set()

    async def _main(self) -> None:
        nc = await nats.connect(
            self.url, token=self.token, connect_timeout=10, max_reconnect_attempts=0
        )
        js = nc.jetstream()
        kv = await js.key_value(self.bucket)
        subs = [await js.pull_subscribe_bind(durable=d, stream=s) for s, d in self.consumers]
        t0 = time.monotonic()
        tick = 0
        while not self.halt.is_set():
            tick += 1
            for _ in range(self.per_tick):
                for subject, data, headers in self.batch(self.published):
                    await nc.publish(subject, data, headers=headers)
                    self.published += 1
            if tick % 5 == 0:
                await kv.put(f"user.{tick % KV_KEYS}", f"live {tick}".encode())
                self.kv_updates += 1
            if tick % 10 == 0:
                for sub in subs:
                    with contextlib.suppress(nats.errors.TimeoutError):
                        for msg in await sub.fetch(5, timeout=2):
                            await msg.ack()
                            self.acked += 1
            await nc.flush()
            self.running.set()
            await asyncio.sleep(max(0.0, t0 + tick * 0.01 - time.monotonic()))
        self.seconds = time.monotonic() - t0
        await nc.close()


def platform_publisher(box: HostContainer, token: str) -> Publisher:
    """The busy platform's writer: ten rounds of a conversation message and an event
    every 10 ms (~2000 msg/s if the machine keeps up), KV updates, acks through
    ``api-worker`` and ``indexer``."""

    def batch(n: int) -> list[tuple[str, bytes, dict[str, str] | None]]:
        body = json.dumps({"turn": n, "role": "user", "content": "live"}).encode()
        return [
            (f"conversations.live-{n % 20:04d}.messages", body, None),
            (f"events.{n % 5}", b'{"live":%d}' % n, None),
        ]

    consumers = ((STREAM, "api-worker"), ("EVENTS", "indexer"))
    url = f"nats://127.0.0.1:{box.port(4222)}"
    return Publisher(url, token, batch, consumers, per_tick=10)


async def stream_messages(js: JetStreamContext, stream: str) -> dict[int, Message]:
    """Every message of ``stream`` by sequence: subject, data, headers but NATS' own (an
    ordered consumer: fast, no acks)."""
    info = await js.stream_info(stream)
    out: dict[int, Message] = {}
    if info.state.messages:
        sub = await js.subscribe(">", stream=stream, ordered_consumer=True)
        while len(out) < info.state.messages:
            msg = await sub.next_msg(timeout=20)
            headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
            out[msg.metadata.sequence.stream] = (msg.subject, msg.data, headers)
        await sub.unsubscribe()
    return out


def read_stream(box: HostContainer, token: str, stream: str) -> dict[int, Message]:
    """``stream_messages`` of ``stream`` on the container's NATS."""
    return with_jetstream(box, token, lambda js: stream_messages(js, stream))


def stream_states(
    box: HostContainer, token: str, names: tuple[str, ...]
) -> dict[str, tuple[int, int, int]]:
    """(messages, first_seq, last_seq) of each stream of ``names``."""

    async def work(js: JetStreamContext) -> dict[str, tuple[int, int, int]]:
        out = {}
        for name in names:
            s = (await js.stream_info(name)).state
            out[name] = (s.messages, s.first_seq, s.last_seq)
        return out

    return with_jetstream(box, token, work)


def consumer_floors(
    box: HostContainer, token: str, pairs: tuple[tuple[str, str], ...]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(ack floor, delivered) stream sequences of each (stream, durable consumer)."""

    async def work(js: JetStreamContext) -> dict[tuple[str, str], tuple[int, int]]:
        out = {}
        for stream, name in pairs:
            ci = await js.consumer_info(stream, name)
            assert ci.ack_floor is not None and ci.delivered is not None
            out[(stream, name)] = (ci.ack_floor.stream_seq, ci.delivered.stream_seq)
        return out

    return with_jetstream(box, token, work)


def kv_latest(box: HostContainer, token: str, subjects: list[str]) -> dict[str, bytes]:
    """The current value of each key of the ``sessions`` bucket named by its subject."""

    async def work(js: JetStreamContext) -> dict[str, bytes]:
        kv = await js.key_value(KV_BUCKET)
        prefix = f"$KV.{KV_BUCKET}."
        return {s: (await kv.get(s.removeprefix(prefix))).value or b"" for s in subjects}

    return with_jetstream(box, token, work)
