"""Start the multi-host topology of tests/test_multihost.py, to try it by hand.

Run as root (it creates network namespaces, a bridge and veth pairs, all named
``cidmh...``, on 10.213.47.0/24, and removes them on exit or at the next start):

    sudo .venv/bin/python scripts/multihost.py [--work DIR]

It prints every host's address; from this shell, e.g.
``curl -i http://<res1>:8080/MA.156.1301/SEED-1`` or
``dig @<res1> -p 5353 TXT seed-1.1301.156.ma.cityid.test``;
inside a host, ``ip netns exec cidmh-res1 ...``. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import multihost_topology
import netns_harness


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--work", type=Path, help="directory for keys, logs and data (default: a new temp dir)"
    )
    args = p.parse_args()
    reason = netns_harness.unavailable_reason()
    if reason:
        print(f"multihost: {reason}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="cityid-multihost-"))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with netns_harness.Net() as net:
        topo = multihost_topology.start(net, work)
        print(f"multihost: up in {topo.started_in:.1f} s, data and logs in {work}")  # type: ignore[attr-defined]
        print(topo.describe())
        print("Ctrl-C stops everything.", flush=True)
        stop.wait()
    print("multihost: stopped, namespaces removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
