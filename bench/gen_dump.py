"""Writes N MiB of pg_dump-like text to stdout: COPY rows with JSON chat logs.

Varied enough that zstd compresses it about as well as a real dump (~3-4x),
cheap enough to produce at hundreds of MB/s: rows are assembled from a
pre-generated pool of random fragments.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid

WORDS = [
    "the",
    "call",
    "agent",
    "caller",
    "please",
    "transfer",
    "account",
    "balance",
    "invoice",
    "refund",
    "voice",
    "pipeline",
    "deepgram",
    "transcript",
    "latency",
    "error",
    "retry",
    "webhook",
    "token",
    "session",
    "customer",
    "order",
    "status",
    "shipping",
    "address",
    "phone",
    "number",
    "callback",
    "schedule",
    "tomorrow",
    "morning",
    "afternoon",
    "thanks",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pool = []
    for _ in range(4096):
        turns = ", ".join(
            json.dumps(
                {
                    "role": rng.choice(("caller", "agent")),
                    "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 40))),
                }
            )
            for _ in range(rng.randint(1, 6))
        )
        pool.append(f'{{"turns": [{turns}], "lang": "{rng.choice(("en", "es", "de"))}"}}')
    out = sys.stdout.buffer
    out.write(b"COPY public.conversations (id, uid, transcript) FROM stdin;\n")
    target = args.size_mb << 20
    written, row = 0, 0
    block: list[str] = []
    while written < target:
        row += 1
        block.append(f"{row}\t{uuid.UUID(int=rng.getrandbits(128))}\t{rng.choice(pool)}\n")
        if len(block) == 2000:
            data = "".join(block).encode()
            out.write(data)
            written += len(data)
            block.clear()
    out.write(b"\\.\n")
    out.flush()


if __name__ == "__main__":
    main()
