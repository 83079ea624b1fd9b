"""pyhandle pointed at ``cityid up``'s city registrar with config only: URL, username, secret.

``cityid up`` (on free loopback ports, in a temporary data directory) seeds the traffic
department's Handle admin and grants the city registrar custody for it
(``stack/handle_demo.py``). pyhandle's RESTHandleClient then registers, reads,
modifies and deletes through the registrar; the resolver, following the city's log,
serves what it wrote to a read-only pyhandle client.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pyhandle.client.resthandleclient import RESTHandleClient
from test_up import start, stop, write_config

from stack.handle_demo import ADMIN, DEPARTMENT, SECRET_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_pyhandle_writes_through_cityid_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ports = write_config(data, assets=10)
    proc, ready = start(data, tmp_path)
    try:
        secret = (data / "keys" / SECRET_FILE).read_text().strip()
        writer = RESTHandleClient.instantiate_with_username_and_password(
            ready["city"], ADMIN, secret, HTTPS_verify=False, handleowner=ADMIN
        )
        reader = RESTHandleClient.instantiate_for_read_access(f"http://127.0.0.1:{ports['http']}")
        bus = f"{DEPARTMENT}/PYHANDLE-1"
        assert writer.register_handle(bus, "https://bus.example/py1") == bus
        writer.modify_handle_value(bus, EMAIL="ops@bus.example")
        assert writer.retrieve_handle_record(bus)["EMAIL"] == "ops@bus.example"
        deadline = time.monotonic() + 30  # the resolver follows the city's log
        while reader.retrieve_handle_record_json(bus) is None:
            assert time.monotonic() < deadline, "the resolver never served the handle"
            time.sleep(0.2)
        while reader.retrieve_handle_record(bus).get("EMAIL") != "ops@bus.example":
            assert time.monotonic() < deadline, "the resolver never served the update"
            time.sleep(0.2)
        writer.delete_handle(bus)
        assert writer.retrieve_handle_record_json(bus) is None
    finally:
        out = stop(proc)
    assert f"Handle clients write as {ADMIN}" in out
