"""make demo: the main job on the embedded default, end to end, on this machine.

Starts a throwaway PostgreSQL with a callmeback-like database and sample
.env files, runs `drkit init`, backs them up to the local repository,
verifies the snapshot, restores the database under a new name and the .env
files into a directory, and shows that row counts and key names match.
Everything lives in a temp dir and is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import load_callmeback, write_policy  # noqa: E402
from tests.servers.postgres import postgres_server  # noqa: E402


def drkit(env: dict[str, str], *args: str) -> str:
    print(f"$ drkit {' '.join(args)}", flush=True)
    res = subprocess.run(
        [sys.executable, "-m", "drkit", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(res.stderr)
    if res.returncode != 0:
        sys.stdout.write(res.stdout)
        raise SystemExit(f"demo: drkit {args[0]} failed with exit {res.returncode}")
    return res.stdout


def counts(pg: object, db: str) -> dict[str, int]:
    rows = pg.psql(  # type: ignore[attr-defined]
        db,
        "SELECT format('%s|%s', t, (xpath('/row/c/text()', "
        "query_to_xml(format('SELECT count(*) AS c FROM %s', t), false, true, '')))[1]::text) "
        "FROM (SELECT schemaname || '.' || tablename AS t FROM pg_tables "
        "WHERE schemaname = 'public' ORDER BY 1) x;",
    )
    return {ln.split("|")[0]: int(ln.split("|")[1]) for ln in rows.split()}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="drkit-demo-"))
    env = dict(os.environ)
    env.update(
        DRKIT_CONFIG_DIR=str(work / "config"),
        DRKIT_STATE_DIR=str(work / "state"),
        XDG_DATA_HOME=str(work / "data"),
    )
    try:
        for app, keys in {
            "voice-pipeline": "PORT=8080\nDEEPGRAM_API_KEY=demo-not-a-secret\n",
            "db-proxy": "PORT=3000\nDATABASE_URL=postgres://demo@localhost/db\n",
        }.items():
            (work / "apps" / app).mkdir(parents=True)
            (work / "apps" / app / ".env").write_text(keys)
            (work / "apps" / app / ".env").chmod(0o600)
        with postgres_server() as pg:
            print(f"demo: PostgreSQL 15 on 127.0.0.1:{pg.port}, loading callmeback ...")
            load_callmeback(pg, "callmeback", "callmeback_app", "demo-password")
            init = json.loads(drkit(env, "init", "--host", "vultr", "--json"))
            policy = write_policy(
                work / "vultr.toml",
                "vultr",
                {"url": init["repository"]},
                [init["recipient"]],
                [
                    {
                        "kind": "postgres",
                        "name": "callmeback",
                        "database": "callmeback",
                        "host": "127.0.0.1",
                        "port": pg.port,
                        "user": "postgres",
                    },
                    {"kind": "env", "name": "env-files", "paths": [f"{work}/apps/*/.env"]},
                ],
                signers=[init["signer"]],
            )
            print(drkit(env, "backup", "--policy", str(policy)), end="")
            print(drkit(env, "snapshots", "--policy", str(policy)), end="")
            print(drkit(env, "verify", "--policy", str(policy)), end="")
            print(
                drkit(
                    env,
                    "restore",
                    "--yes",
                    "--policy",
                    str(policy),
                    "--database",
                    "callmeback_restored",
                    "--dest",
                    str(work / "restored"),
                ),
                end="",
            )
            before, after = counts(pg, "callmeback"), counts(pg, "callmeback_restored")
            print(f"\n{'table':<22}{'original':>10}{'restored':>10}")
            for table in sorted(before):
                print(f"{table:<22}{before[table]:>10}{after.get(table, -1):>10}")
            env_ok = all(
                (work / "restored" / str(work / "apps" / app / ".env").lstrip("/")).read_text()
                == (work / "apps" / app / ".env").read_text()
                for app in ("voice-pipeline", "db-proxy")
            )
            print(f".env files restored identical: {env_ok}")
            if before != after or not env_ok:
                raise SystemExit("demo: FAILED, restored data differs")
            print("demo: OK, restored row counts match")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
