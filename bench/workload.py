"""The bench-1G workload: a PostgreSQL cluster built once, cached, and started from a copy.

bench-1G (``/work/shared/perf-anchors.md``) is ``pgbench -i -s 30`` plus a
``conversations`` table of 200k JSONB chat logs (1-30 turns, ~3.4 KB each:
a Zipf-distributed vocabulary, code blocks, UUIDs, timestamps). Building it
takes about a minute, so the finished data directory is cached under
``.cache/bench/<key>/`` where the key hashes this file's source, the spec and
the PostgreSQL version: editing the generator rebuilds, nothing else does.

Every benchmark session starts PostgreSQL on a private copy of the cached
directory (the benchmark changes the data: churn, restored databases), on a
free port of 127.0.0.1, and stops it by PID.

Server settings are those of ``tests/servers/postgres.py`` (fsync=off,
max_connections=50), so figures are comparable with the tests' server.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers.ports import free_port  # noqa: E402
from tests.servers.postgres import PG_BIN, PgServer, _demote_kwargs  # noqa: E402

DATABASE = "bench"
DEFAULT_CACHE = ROOT / ".cache" / "bench"


@dataclass(frozen=True)
class WorkloadSpec:
    """What to build: pgbench scale, number of conversations, seed; churn length."""

    scale: int = 30
    conversations: int = 200_000
    seed: int = 8
    churn_seconds: int = 20

    @classmethod
    def quick(cls) -> WorkloadSpec:
        """A few MB: for the smoke test of the harness."""
        return cls(scale=1, conversations=1500, churn_seconds=2)

    def cache_key(self) -> str:
        """Hash of this module's code, the spec (churn aside) and the server version."""
        h = hashlib.sha256(Path(__file__).read_bytes())
        h.update(json.dumps({**asdict(self), "churn_seconds": None}, sort_keys=True).encode())
        h.update(_pg_version().encode())
        return h.hexdigest()[:16]


def _pg_version() -> str:
    out = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


# ---- the conversations generator ------------------------------------------

_SYLLABLES = [
    "ka",
    "ro",
    "mi",
    "te",
    "lu",
    "sa",
    "na",
    "vo",
    "ri",
    "de",
    "po",
    "fa",
    "shi",
    "ten",
    "gor",
    "bel",
    "min",
    "ux",
    "qua",
    "zed",
    "lo",
    "pra",
    "nor",
    "ith",
    "el",
    "an",
    "ver",
    "tro",
    "stel",
    "mon",
    "dak",
    "ki",
    "ja",
    "wen",
    "ol",
    "ham",
    "bru",
    "ces",
    "tal",
    "ope",
    "ric",
]
_COMMON = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "is",
    "in",
    "for",
    "you",
    "it",
    "that",
    "on",
    "with",
    "can",
    "be",
    "my",
    "i",
    "your",
    "this",
    "have",
    "are",
    "we",
    "not",
    "please",
    "call",
    "order",
    "account",
    "number",
    "phone",
    "refund",
    "payment",
    "card",
    "help",
    "thanks",
    "yes",
    "no",
    "sure",
    "okay",
    "today",
    "tomorrow",
    "morning",
    "problem",
    "issue",
    "ticket",
    "email",
    "address",
    "invoice",
    "delivery",
    "status",
    "update",
    "error",
    "log",
    "deploy",
    "server",
    "database",
    "query",
    "timeout",
]
_ROLES = ("user", "assistant", "tool")
_MODELS = ("gpt-4o", "claude-3-5-sonnet", "llama-3.1-70b", "mistral-large")
_LANGS = ("en", "en", "en", "es", "de", "fr", "pt")
_CHANNELS = ("voice", "web", "sms", "whatsapp", "email")
_CODE = (
    "```python\ndef {a}_{b}({c}, {d}=None):\n    {e} = {c}.get('{f}', {n})\n"
    "    if {e} > {m}:\n        raise ValueError('{g} {h}')\n    return {e} * {d}\n```",
    "```sql\nSELECT {a}_id, count(*) AS {b}\nFROM {c}_{d}\nWHERE {e} > {n} AND {f} = '{g}'\n"
    "GROUP BY 1 ORDER BY 2 DESC LIMIT {m};\n```",
    "```js\nconst {a} = await fetch(`/api/{b}/${{{c}}}`);\nif (!{a}.ok) throw new Error('{d} "
    "{e}: ' + {a}.status);\nconst {{ {f}, {g} }} = await {a}.json(); // {n}\n```",
    "```bash\nexport {A}_{B}={n}\ncurl -s -X POST https://{c}.example/{d} -d '{{\"{e}\": {m}}}'"
    " | jq .{f}\n```",
    '```\nTraceback (most recent call last):\n  File "/srv/{a}/{b}.py", line {n}, in {c}\n'
    "    {d}({e})\n{F}Error: {g} {h} ({m})\n```",
)


class ConversationGenerator:
    """Deterministic COPY text rows: ``id, uid, created_at, channel, transcript``."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        words = list(_COMMON)
        while len(words) < 30_000:
            words.append("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))))
        # Zipf-like: frequent words dominate, a long tail keeps the text varied.
        cum, total = [], 0.0
        for rank in range(len(words)):
            total += 1.0 / (rank + 1) ** 0.95
            cum.append(total)
        self.sentences = [self._sentence(words, cum) for _ in range(150_000)]
        self.code = [self._code_block(words) for _ in range(3000)]

    def _sentence(self, words: list[str], cum_weights: list[float]) -> str:
        rng = self.rng
        picked = rng.choices(words, cum_weights=cum_weights, k=rng.randint(4, 15))
        if rng.random() < 0.3:
            picked.insert(rng.randrange(len(picked)), str(uuid.UUID(int=rng.getrandbits(128))))
        if rng.random() < 0.2:
            picked.insert(rng.randrange(len(picked)), str(rng.randint(0, 99_999)))
        text = " ".join(picked)
        return text[0].upper() + text[1:] + rng.choice(".....?!")

    def _code_block(self, words: list[str]) -> str:
        rng = self.rng
        names = {k: rng.choice(words) for k in "abcdefgh"}
        names.update({k.upper(): v.upper() for k, v in names.items()})
        return rng.choice(_CODE).format(n=rng.randint(0, 9999), m=rng.randint(1, 500), **names)

    def transcript(self, started: float) -> str:
        rng = self.rng
        turns: list[dict[str, Any]] = []
        t = started
        for i in range(rng.randint(1, 30)):
            role = _ROLES[i % 2] if rng.random() > 0.08 else "tool"
            parts = [rng.choice(self.sentences) for _ in range(rng.randint(1, 3))]
            if role == "assistant" and rng.random() < 0.12:
                parts.append(rng.choice(self.code))
            t += rng.uniform(0.5, 40)
            turns.append(
                {
                    "role": role,
                    "content": " ".join(parts),
                    "ts": round(t, 3),
                    "tokens": rng.randint(3, 900),
                }
            )
        doc = {
            "session": str(uuid.UUID(int=rng.getrandbits(128))),
            "model": rng.choice(_MODELS),
            "lang": rng.choice(_LANGS),
            "turns": turns,
            "meta": {"agent": f"agent-{rng.randint(1, 400)}", "score": rng.randint(1, 5)},
        }
        return json.dumps(doc, ensure_ascii=False, separators=(", ", ": "))

    def rows(self, count: int) -> Iterator[bytes]:
        """COPY text-format lines, in blocks of about 1 MB."""
        rng = self.rng
        block: list[str] = []
        epoch = 1_700_000_000.0
        for row in range(1, count + 1):
            started = epoch + row * 150 + rng.uniform(0, 120)
            when = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(started))
            # COPY text format: the only special characters left by json.dumps
            # (which escapes newlines and tabs) are backslashes.
            doc = self.transcript(started).replace("\\", "\\\\")
            uid = uuid.UUID(int=rng.getrandbits(128))
            block.append(f"{row}\t{uid}\t{when}\t{rng.choice(_CHANNELS)}\t{doc}\n")
            if len(block) == 300:
                yield "".join(block).encode()
                block.clear()
        if block:
            yield "".join(block).encode()


_SCHEMA = """CREATE TABLE conversations (
  id bigint PRIMARY KEY,
  uid uuid NOT NULL,
  created_at timestamptz NOT NULL,
  channel text NOT NULL,
  transcript jsonb NOT NULL
);
"""


# ---- the cluster --------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """A running benchmark server and where its files are."""

    server: PgServer
    base: Path  # private dir: data/, server.log, the unix socket

    def pg_args(self, database: str = DATABASE) -> list[str]:
        """Connection flags for pg_dump, psql, pg_restore, pgbench."""
        return [
            "-h",
            self.server.host,
            "-p",
            str(self.server.port),
            "-U",
            self.server.user,
            "-d",
            database,
        ]

    def tool(self, name: str) -> str:
        return str(PG_BIN / name)


def _as_postgres() -> dict[str, Any]:
    """Popen arguments that run initdb/postgres as the postgres user when we are root."""
    return dict(_demote_kwargs())


def _private_dir(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    kwargs = _as_postgres()
    if kwargs:
        os.chown(base, kwargs["user"], kwargs["group"])
    return base


def _initdb(data: Path) -> None:
    subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--locale=C.UTF-8", "--no-sync"],
        check=True, capture_output=True, **_as_postgres(),
    )  # fmt: skip


@contextmanager
def _postgres(base: Path) -> Iterator[PgServer]:
    """postgres on ``base/data`` (already there), as tests/servers/postgres.py runs it."""
    port = free_port()
    log = open(base / "server.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(PG_BIN / "postgres"), "-D", str(base / "data"), "-p", str(port), "-k", str(base),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"],
        stdout=log, stderr=subprocess.STDOUT, **_as_postgres(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
            capture_output=True, check=False,
        ).returncode:  # fmt: skip
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((base / "server.log").read_text()[-2000:])
            time.sleep(0.1)
        yield PgServer(port)
    finally:
        proc.terminate()  # SIGTERM = smart shutdown: a clean checkpoint for the cache
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _build(spec: WorkloadSpec, target: Path, log: Any) -> dict[str, Any]:
    """Build the workload into ``target/data``; return its facts."""
    base = _private_dir("drkit-bench-build-")
    try:
        _initdb(base / "data")
        with _postgres(base) as pg:
            cluster = Cluster(pg, base)
            pg.psql("postgres", f"CREATE DATABASE {DATABASE};")
            t0 = time.monotonic()
            subprocess.run(
                [cluster.tool("pgbench"), *cluster.pg_args(), "-i", "-q", "-s", str(spec.scale)],
                check=True, capture_output=True,
            )  # fmt: skip
            log(f"workload: pgbench -i -s {spec.scale} in {time.monotonic() - t0:.0f}s")
            t0 = time.monotonic()
            pg.psql(DATABASE, _SCHEMA)
            copy = subprocess.Popen(
                [cluster.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *cluster.pg_args(),
                 "-c", "COPY conversations FROM STDIN"],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            assert copy.stdin is not None
            for block in ConversationGenerator(spec.seed).rows(spec.conversations):
                copy.stdin.write(block)
            copy.stdin.close()
            if copy.wait() != 0:
                err = copy.stderr.read().decode() if copy.stderr else ""
                raise RuntimeError(f"COPY conversations failed: {err}")
            log(f"workload: {spec.conversations} conversations in {time.monotonic() - t0:.0f}s")
            pg.psql(DATABASE, "VACUUM ANALYZE;")
            pg.psql("postgres", "CHECKPOINT;")
            facts = describe(cluster)
        target.mkdir(parents=True, exist_ok=True)
        # cp -a keeps the postgres ownership and modes initdb gave the files.
        subprocess.run(["cp", "-a", str(base / "data"), str(target / "data")], check=True)
        (target / "workload.json").write_text(json.dumps(facts, indent=2) + "\n")
        return facts
    finally:
        shutil.rmtree(base, ignore_errors=True)


def describe(cluster: Cluster) -> dict[str, Any]:
    """Sizes and row counts of the bench database, as PostgreSQL reports them."""
    out = cluster.server.psql(
        DATABASE,
        "SELECT json_build_object('database_bytes', pg_database_size(current_database()), "
        "'accounts', (SELECT count(*) FROM pgbench_accounts), "
        "'conversations', (SELECT count(*) FROM conversations), "
        "'conversations_bytes', pg_total_relation_size('conversations'));",
    )
    return dict(json.loads(out))


def ensure_cached(spec: WorkloadSpec, cache: Path, log: Any = print) -> Path:
    """The cached build for ``spec`` (built now if missing); returns its directory."""
    final = cache / spec.cache_key()
    if (final / "workload.json").exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        t0 = time.monotonic()
        _build(spec, staging, log)
        staging.rename(final)  # atomic: a half-built cache entry is never seen
        log(f"workload: built and cached in {final} ({time.monotonic() - t0:.0f}s)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


@contextmanager
def bench_cluster(
    spec: WorkloadSpec, cache: Path = DEFAULT_CACHE, log: Any = print
) -> Iterator[Cluster]:
    """A running server on a private copy of the cached workload; removed afterwards."""
    built = ensure_cached(spec, cache, log)
    base = _private_dir("drkit-bench-pg-")
    try:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(built / "data"), str(base / "data")], check=True
        )
        with _postgres(base) as pg:
            yield Cluster(pg, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def churn(cluster: Cluster, seconds: int) -> dict[str, Any]:
    """``pgbench -T seconds`` (TPC-B-like updates), then VACUUM and CHECKPOINT."""
    res = subprocess.run(
        [cluster.tool("pgbench"), *cluster.pg_args(), "-T", str(seconds), "-n"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    tx = next((ln for ln in res.stdout.splitlines() if "transactions actually processed" in ln), "")
    cluster.server.psql(DATABASE, "VACUUM;")
    cluster.server.psql("postgres", "CHECKPOINT;")
    return {"seconds": seconds, "transactions": int(tx.rsplit(":", 1)[-1].split("/")[0] or 0)}
