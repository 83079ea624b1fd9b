"""Peak RSS of a registrar while many clients send it large unauthenticated bodies.

Run from the repository root::

    .venv/bin/python bench/upload_memory.py                      # 50 x 64 MiB, msgpack
    .venv/bin/python bench/upload_memory.py --kind signed        # leaves signed by anyone
    .venv/bin/python bench/upload_memory.py --kind authorized    # by the prefix's own key
    .venv/bin/python bench/upload_memory.py --kind json          # PUT /api/handles bodies
    .venv/bin/python bench/upload_memory.py --clients 8 --mib 16 # smaller

The registrar is a child process (``python -m cityid.cli registrar serve DIR``
on 127.0.0.1). Each client opens a raw socket and sends one request whose body
is ``--mib`` MiB with an honest ``Content-Length``, all at once:

* ``msgpack``: ``POST /api/ops`` (``application/msgpack``), an array of 64 KiB
  binary leaves with no valid signature: anyone can send it, no key needed;
* ``signed``: the same, but every leaf is a mint correctly signed by a key that
  holds nothing (anyone can make one): each leaf decodes and verifies, and only
  the authority check refuses it;
* ``authorized``: the same mints signed by the prefix's own key, so every leaf
  is read and decoded (the first request is applied, the others find its
  identifiers taken): what the body budget alone bounds;
* ``json``: ``PUT /api/handles/ID`` (``application/json``) with a well-formed
  Authorization header (a signature over nothing) and one long JSON array.

Measured on two cores, 50 clients x 64 MiB (peak RSS; before = the registrar
that read every body whole, after = ``cityid/httpedge.py`` and the leaf-by-leaf
reader): msgpack 2.9-3.5 GB -> 83 MiB; signed 3.3 GB -> 84 MiB; json
3.0-3.4 GB (1.3 GB kept after) -> 80 MiB; authorized 3.7 GB -> 1.1 GB (four
read at once, 46 answered 503 with Retry-After).

Every body comes from one shared buffer, so the client side costs one copy.
The registrar's RSS is sampled every 20 ms (psutil) from the moment before the
first byte until every client has its answer, then once more 2 s later (what
stays). Printed: the answers by status, peak RSS, the RSS before and after, and
the wall time. Every wait is bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from registrar_harness import CITY, HOST, RegistrarProcess, make_registrar  # noqa: E402

from cityid.keys import SigningKey  # noqa: E402

MiB = 1024 * 1024
LEAF = 64 * 1024 - 64  # under MAX_LEAF, so each leaf passes the length check


def msgpack_body(size: int) -> bytes:
    n = max(1, (size - 16) // (LEAF + 3))
    return msgpack.packb([b"\x00" * LEAF] * n, use_bin_type=True)


def signed_body(size: int, key: SigningKey | None = None) -> bytes:
    from cityid.ops import Mint, MintItem, SignedOperation
    from cityid.records import Record, Value

    signer = key or SigningKey.generate("stranger")
    t = int(time.time())
    record = Record.of([Value.make(1, "DESC", "x" * 3900, 86400, t)])
    leaves: list[bytes] = []
    total = 0
    while total < size - 70_000:
        n = len(leaves)
        items = tuple(MintItem(f"BIG-{n}-{i}", 0, record) for i in range(15))
        leaf = SignedOperation.sign(Mint(CITY, items, t), signer).encode()
        leaves.append(leaf)
        total += len(leaf) + 3
    return msgpack.packb(leaves, use_bin_type=True)


def json_body(size: int) -> bytes:
    item = b'{"index":1,"type":"DESC","data":"' + b"x" * 1000 + b'"},'
    n = max(1, size // len(item))
    return b"[" + item * (n - 1) + item[:-1] + b"]"


def request(kind: str, body_len: int) -> bytes:
    if kind != "json":
        head = "POST /api/ops HTTP/1.1\r\nContent-Type: application/msgpack\r\n"
    else:
        key = base64.b64encode(b"\x01" * 32).decode()
        sig = base64.b64encode(b"\x02" * 64).decode()
        auth = f'CityID-Ed25519 key="{key}", sig="{sig}", time="{int(time.time())}"'
        head = (
            f"PUT /api/handles/{CITY}.02/BIG-1 HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Authorization: {auth}\r\n"
        )
    return (
        f"{head}Host: {HOST}\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    ).encode()


async def upload(port: int, head: bytes, body: memoryview, timeout: float) -> str:
    """Send one request; the status line's code, or what went wrong."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(head)
                answer = asyncio.ensure_future(reader.readline())
                for i in range(0, len(body), MiB):
                    if answer.done():
                        break  # answered early (refused before the whole body)
                    writer.write(body[i : i + MiB])
                    await writer.drain()
                line = await answer
                return line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "closed"
            finally:
                writer.close()
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return type(e).__name__


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.running = True

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cityid-upload-") as tmp:
        spec = make_registrar(Path(tmp) / "city", CITY, "city.upload.test/log")
        size = args.mib * MiB
        if args.kind == "authorized":
            body = signed_body(size, spec.admin)
        else:
            make = {"msgpack": msgpack_body, "signed": signed_body, "json": json_body}
            body = make[args.kind](size)
        view = memoryview(body)
        head = request(args.kind, len(body))
        with RegistrarProcess(spec) as reg:
            reg.start()
            sampler = Sampler(reg.pid)
            before = sampler.rss()
            sampler.start()
            t0 = time.monotonic()
            got = await asyncio.gather(
                *(upload(spec.port, head, view, args.timeout) for _ in range(args.clients))
            )
            wall = time.monotonic() - t0
            await asyncio.sleep(2.0)
            sampler.running = False
            sampler.join()
            after = sampler.rss()
            reg.stop()
    counts = collections.Counter(got)
    print(
        f"{args.clients} x {len(body) / MiB:.1f} MiB {args.kind} bodies: answers "
        + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    )
    print(
        f"registrar RSS: before {before / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB, "
        f"2 s after {after / MiB:.0f} MiB; wall {wall:.1f} s"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--mib", type=int, default=64, help="body size in MiB (default 64)")
    p.add_argument("--kind", choices=("msgpack", "signed", "authorized", "json"), default="msgpack")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per client at most")
    asyncio.run(main(p.parse_args()))
