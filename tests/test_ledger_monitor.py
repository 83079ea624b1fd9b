"""ledger/monitor.py on real logs served over loopback: one history, a fork, a rollback."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from cityid.keys import SigningKey
from ledger.http import serve_app, tiles_app
from ledger.monitor import View, compare
from ledger.storage import Log

ORIGIN = "city.cityid.test/log"


async def test_views_of_one_history_agree_and_a_fork_is_found(tmp_path: Path) -> None:
    key = SigningKey.generate(ORIGIN)
    log = Log.create(tmp_path / "real", key, ORIGIN)
    log.append([b"a", b"b", b"c"])
    shutil.copytree(tmp_path / "real", tmp_path / "behind")  # an older, honest view
    log.append([b"d"])
    shutil.copytree(tmp_path / "behind", tmp_path / "fork")
    log.append([b"e"])
    log.close()
    fork = Log.open(tmp_path / "fork", key)
    fork.append([b"D"])  # size 4, like the real log once was, with another entry
    fork.close()
    other = SigningKey.generate(ORIGIN)  # same name, not the log's key
    stranger = Log.create(tmp_path / "stranger", other, ORIGIN)
    stranger.append([b"x"])
    stranger.close()

    async with contextlib.AsyncExitStack() as stack:
        urls = {
            name: await stack.enter_async_context(serve_app(tiles_app(tmp_path / name)))
            for name in ("real", "behind", "fork", "stranger")
        }
        honest = await compare([View("a", urls["real"]), View("b", urls["behind"])], key.verifier)
        assert honest.divergences == [] and not honest.unreadable
        assert {o: c.size for o, c in honest.checkpoints.items()} == {"a": 5, "b": 3}

        views = [View(n, urls[n]) for n in ("real", "behind", "fork", "stranger")]
        seen = await compare(views, key.verifier)
    # The fork extends the older view (it was copied from it) but not the real log.
    assert [(d.first, d.second) for d in seen.divergences] == [("fork", "real")]
    assert "forked" in str(seen.divergences[0]) and ORIGIN in str(seen.divergences[0])
    # A checkpoint the log's key did not sign is no evidence of anything: set aside.
    assert list(seen.unreadable) == ["stranger"] and "stranger" not in seen.checkpoints
