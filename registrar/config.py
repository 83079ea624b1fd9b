"""A registrar's configuration: one TOML file in its data directory.

``cityid registrar init`` writes it; ``cityid registrar serve DIR`` reads it.
Every key has a default here, and docs/config.md lists them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityid.errors import CityIdError
from cityid.identifiers import Prefix
from cityid.keys import SigningKey, VerifierKey
from cityid.netaddr import host_port
from cityid.tomlkeys import VALUE, unknown_keys_message

CONFIG_NAME = "registrar.toml"


#: Every key ``load`` reads; any other is refused (:mod:`cityid.tomlkeys`).
SCHEMA: dict[str, Any] = {
    **dict.fromkeys(
        (
            "origin",
            "log_key",
            "listen",
            "public_url",
            "quorum",
            "witness_timeout_ms",
            "custody_key",
        ),
        VALUE,
    ),
    "batch": dict.fromkeys(("max_size", "max_delay_ms"), VALUE),
    "snapshot": dict.fromkeys(("every",), VALUE),
    "applications": dict.fromkeys(("per_hour",), VALUE),
    "anchor": [dict.fromkeys(("prefix", "key"), VALUE)],
    "witness": [dict.fromkeys(("url", "key"), VALUE)],
}


class ConfigError(CityIdError):
    rule = "config"


#: Replay work (leaves plus explicitly minted identifiers) between two namespace
#: snapshots: what a start after a crash replays at most (docs/registrar.md).
DEFAULT_SNAPSHOT_EVERY = 250_000
#: Applications (``POST /api/applications``) one client address may send an hour.
DEFAULT_APPLICATIONS_PER_HOUR = 30


@dataclass(frozen=True, slots=True)
class Anchor:
    """A prefix this registrar hosts, and the key trusted to write under it."""

    prefix: Prefix
    key: VerifierKey


@dataclass(slots=True)
class RegistrarConfig:
    directory: Path
    origin: str
    log_key_file: Path
    anchors: list[Anchor]
    listen: str = "127.0.0.1:8000"
    public_url: str = ""
    max_batch: int = 1000
    max_delay_ms: int = 250
    witnesses: list[tuple[str, VerifierKey]] = field(default_factory=list)
    quorum: int = 0
    witness_timeout_ms: int = 5000
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    #: The key this registrar signs Handle-authenticated writes with, where a prefix owner
    #: granted it custody (docs/handle.md); the Handle write API needs it.
    custody_key_file: Path | None = None
    applications_per_hour: int = DEFAULT_APPLICATIONS_PER_HOUR

    @property
    def log_dir(self) -> Path:
        return self.directory / "log"

    @property
    def snapshot_dir(self) -> Path:
        """Where namespace snapshots live (derived state: deleting it is always safe)."""
        return self.directory / "snapshot"

    def log_key(self) -> SigningKey:
        return SigningKey.read(self.log_key_file)

    @property
    def host_port(self) -> tuple[str, int]:
        try:
            return host_port(self.listen)
        except ValueError as e:
            raise ConfigError(f"listen {self.listen!r} is not HOST:PORT") from e

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RegistrarConfig:
        d = Path(directory)
        path = d / CONFIG_NAME
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(
                f"{path} not found: create a registrar with 'cityid registrar init {d}'",
                rule="no-config",
            ) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}", rule="bad-config") from e
        bad = unknown_keys_message(raw, SCHEMA, path)
        if bad:
            raise ConfigError(bad, rule="bad-config")
        try:
            anchors = [
                Anchor(Prefix.parse(a["prefix"]), VerifierKey.parse(a["key"]))
                for a in raw.get("anchor", [])
            ]
            witnesses = [(w["url"], VerifierKey.parse(w["key"])) for w in raw.get("witness", [])]
            batch = raw.get("batch", {})
            snapshot = raw.get("snapshot", {})
            applications = raw.get("applications", {})
            cfg = cls(
                directory=d,
                origin=raw["origin"],
                log_key_file=d / raw.get("log_key", "log.key"),
                anchors=anchors,
                listen=raw.get("listen", "127.0.0.1:8000"),
                public_url=raw.get("public_url", ""),
                max_batch=int(batch.get("max_size", 1000)),
                max_delay_ms=int(batch.get("max_delay_ms", 250)),
                witnesses=witnesses,
                quorum=int(raw.get("quorum", len(witnesses))),
                witness_timeout_ms=int(raw.get("witness_timeout_ms", 5000)),
                snapshot_every=int(snapshot.get("every", DEFAULT_SNAPSHOT_EVERY)),
                custody_key_file=d / raw["custody_key"] if "custody_key" in raw else None,
                applications_per_hour=int(
                    applications.get("per_hour", DEFAULT_APPLICATIONS_PER_HOUR)
                ),
            )
        except KeyError as e:
            raise ConfigError(f"{path}: missing key {e}", rule="bad-config") from e
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {e}", rule="bad-config") from e
        if not anchors:
            raise ConfigError(f"{path}: no [[anchor]]: a registrar hosts at least one prefix")
        if not 0 <= cfg.quorum <= len(witnesses):
            raise ConfigError(f"{path}: quorum {cfg.quorum} but {len(witnesses)} witnesses")
        if cfg.applications_per_hour < 1:
            raise ConfigError(f"{path}: applications.per_hour must be 1 or more")
        if cfg.snapshot_every < 0:
            raise ConfigError(f"{path}: snapshot.every must be 0 (only at a clean stop) or more")
        return cfg

    def save(self) -> Path:
        lines = [
            "# cityid registrar configuration (docs/config.md explains every key).",
            f"origin = {_q(self.origin)}  # ledger origin: the name in its checkpoints",
            f"log_key = {_q(os.path.relpath(self.log_key_file, self.directory))}"
            "  # signs checkpoints",
            f"listen = {_q(self.listen)}",
            f"public_url = {_q(self.public_url)}  # where others reach this registrar",
            # Without witnesses, a written "quorum = 0" would outlive [[witness]] tables
            # added later and publish uncosigned: leave the key to its default (all of them).
            f"quorum = {self.quorum}  # witness cosignatures needed before publishing"
            if self.witnesses
            else "# quorum = N  # cosignatures needed before publishing (default: every witness)",
            f"witness_timeout_ms = {self.witness_timeout_ms}",
            *(
                [
                    f"custody_key = {_q(os.path.relpath(self.custody_key_file, self.directory))}"
                    "  # signs Handle-authenticated writes where custody is granted"
                ]
                if self.custody_key_file is not None
                else []
            ),
            "",
            "[batch]",
            f"max_size = {self.max_batch}  # operations per checkpoint at most",
            f"max_delay_ms = {self.max_delay_ms}  # how long an operation waits for its batch",
            "",
            "[snapshot]  # of the namespace, in snapshot/: derived from the log, safe to delete",
            f"every = {self.snapshot_every}  # leaves + minted ids between two (0: at stop only)",
            "",
            "[applications]  # for child prefixes (docs/onboarding.md)",
            f"per_hour = {self.applications_per_hour}  # from one client address at most",
        ]
        for a in self.anchors:
            lines += [
                "",
                "[[anchor]]  # a prefix hosted here and its writer's key",
                f"prefix = {_q(str(a.prefix))}",
                f"key = {_q(str(a.key))}",
            ]
        for url, key in self.witnesses:
            lines += ["", "[[witness]]", f"url = {_q(url)}", f"key = {_q(str(key))}"]
        path = self.directory / CONFIG_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        return path


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
