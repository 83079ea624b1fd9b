"""c2sp.org/tlog-policy: which logs to trust, which witnesses, and how many must cosign.

A policy file is line based::

    # comments and blank lines are ignored
    log <vkey> [<url>]
    witness <name> <vkey> [<url>]
    group <name> all|any|<k> <member>...
    quorum <name>|none

A checkpoint is valid under a policy when it is signed by one of the listed
logs (the log key's name is the checkpoint origin) and the witnesses whose
cosignatures verify satisfy the quorum: a witness is satisfied by its own
cosignature, a group when at least ``k`` of its members are. Names refer only
to witnesses and groups defined on earlier lines, so there are no cycles, and
each name is a member of a group at most once, so no witness counts twice.

Parsing, formatting and checking are pure; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cityid.errors import KeyFormatError, LedgerError, NoteError, WitnessError
from cityid.keys import ALG_COSIGNATURE_V1, ALG_ED25519, VerifierKey

from .checkpoint import Checkpoint
from .cosignature import verify_cosignature
from .note import Signature, open_note

NONE = "none"
# The spec asks implementations to support at least 32 of each; a larger bound
# keeps hostile files from costing unbounded memory or recursion.
MAX_ITEMS = 256
MAX_POLICY_SIZE = 1 << 20
# Cosignatures stamped further ahead of the verifier's clock than this are not
# counted (the spec lets verifiers reject future timestamps; allow clock skew).
MAX_FUTURE_SKEW = 600


class PolicyError(LedgerError, ValueError):
    """A tlog-policy file is malformed or inconsistent."""

    rule = "policy"


@dataclass(frozen=True, slots=True)
class LogEntry:
    vkey: VerifierKey
    url: str | None = None

    @property
    def origin(self) -> str:
        return self.vkey.name


@dataclass(frozen=True, slots=True)
class WitnessEntry:
    name: str
    vkey: VerifierKey
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """``group <name> <spec> <members...>``; ``spec`` is ``all``, ``any`` or a decimal k."""

    name: str
    spec: str
    members: tuple[str, ...]

    @property
    def threshold(self) -> int:
        if self.spec == "all":
            return len(self.members)
        if self.spec == "any":
            return 1
        return int(self.spec)


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """A checkpoint that met a policy, and who vouched for it."""

    checkpoint: Checkpoint
    log: VerifierKey
    # policy witness name -> cosignature timestamp
    cosigners: dict[str, int]


def _ws_split(line: str) -> list[str]:
    # The spec's white space is ASCII space and tab only (not str.split()'s set).
    return [t for t in line.replace("\t", " ").split(" ") if t]


def _check_charset(data: bytes) -> None:
    for i, b in enumerate(data):
        if (b < 0x20 and b not in (0x09, 0x0A)) or b == 0x7F:
            raise PolicyError(
                f"policy has control byte {b:#04x} at offset {i} (only tab and newline allowed)",
                rule="policy-charset",
            )


def parse_vkey(text: str) -> VerifierKey:
    """Parse a ``name+hash+base64`` verifier key (type 0x01 or 0x04)."""
    return VerifierKey.parse(text)


def _parse_vkey(text: str, lineno: int, want_alg: int, what: str) -> VerifierKey:
    try:
        vkey = parse_vkey(text)
    except KeyFormatError as e:
        raise PolicyError(f"line {lineno}: {what} key: {e.message}", rule="policy-vkey") from e
    if vkey.alg != want_alg:
        kind = "Ed25519 checkpoint (0x01)" if want_alg == ALG_ED25519 else "cosignature/v1 (0x04)"
        raise PolicyError(
            f"line {lineno}: {what} key {vkey.name} has type {vkey.alg:#04x}, want {kind}",
            rule="policy-key-type",
        )
    return vkey


@dataclass(frozen=True)
class Policy:
    """A parsed tlog-policy. Build with :meth:`parse`, :meth:`for_log` or :meth:`k_of_n`."""

    logs: tuple[LogEntry, ...]
    witnesses: Mapping[str, WitnessEntry]
    groups: Mapping[str, Group]
    quorum: str
    _order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()

    # -- construction ----------------------------------------------------------------

    @classmethod
    def for_log(cls, vkey: VerifierKey, url: str | None = None) -> Policy:
        """Trust one log and require no witnesses (``quorum none``)."""
        return cls((LogEntry(vkey, url),), {}, {}, NONE)

    @classmethod
    def k_of_n(
        cls,
        logs: Iterable[VerifierKey],
        witnesses: Mapping[str, VerifierKey] | Iterable[VerifierKey],
        k: int,
        *,
        urls: Mapping[str, str] | None = None,
    ) -> Policy:
        """Any ``k`` of the given witnesses. Unnamed witnesses are named by their key name."""
        items = (
            dict(witnesses) if isinstance(witnesses, Mapping) else {v.name: v for v in witnesses}
        )
        urls = urls or {}
        ws = {n: WitnessEntry(n, v, urls.get(n)) for n, v in items.items()}
        if k == 0:
            return cls(tuple(LogEntry(v) for v in logs), ws, {}, NONE)
        if k == 1 and len(ws) == 1:
            return cls(tuple(LogEntry(v) for v in logs), ws, {}, next(iter(ws)))
        name = "quorum"
        while name in ws:
            name += "_"
        group = Group(name, str(k), tuple(ws))
        return cls(tuple(LogEntry(v) for v in logs), ws, {name: group}, name)

    def _validate(self) -> None:
        seen_keys: dict[bytes, str] = {}
        for log in self.logs:
            if log.vkey.alg != ALG_ED25519:
                raise PolicyError(
                    f"log key {log.vkey.name} is not an Ed25519 (0x01) key", rule="policy-key-type"
                )
            if log.vkey.public_key in seen_keys:
                raise PolicyError(
                    f"log key {log.vkey.name} is listed twice", rule="policy-duplicate"
                )
            seen_keys[log.vkey.public_key] = log.vkey.name
        seen_keys = {}
        for name, w in self.witnesses.items():
            if name != w.name or name == NONE:
                raise PolicyError(f"witness name {name!r} is invalid", rule="policy-name")
            if w.vkey.alg != ALG_COSIGNATURE_V1:
                raise PolicyError(
                    f"witness {name} key is not a cosignature/v1 (0x04) key", rule="policy-key-type"
                )
            if w.vkey.public_key in seen_keys:
                raise PolicyError(
                    f"witnesses {seen_keys[w.vkey.public_key]} and {name} have the same key",
                    rule="policy-duplicate",
                )
            seen_keys[w.vkey.public_key] = name
        defined = set(self.witnesses)
        order = self._order or (*self.witnesses, *self.groups)
        for gname in [n for n in order if n in self.groups]:
            g = self.groups[gname]
            if gname in self.witnesses or gname == NONE:
                raise PolicyError(f"group name {gname!r} is already taken", rule="policy-name")
            if not g.members:
                raise PolicyError(f"group {gname} has no members", rule="policy-group")
            if len(set(g.members)) != len(g.members):
                raise PolicyError(f"group {gname} lists a member twice", rule="policy-group")
            for m in g.members:
                if m not in defined:
                    raise PolicyError(
                        f"group {gname}: member {m!r} is not a witness or group defined before it",
                        rule="policy-undefined",
                    )
            if g.spec not in ("all", "any"):
                if not g.spec.isdigit() or g.spec != str(int(g.spec)):
                    raise PolicyError(
                        f"group {gname}: threshold {g.spec!r} is not all, any or a decimal",
                        rule="policy-group",
                    )
                if not 1 <= int(g.spec) <= len(g.members):
                    raise PolicyError(
                        f"group {gname}: threshold {g.spec} is not between 1 and {len(g.members)}",
                        rule="policy-group",
                    )
            defined.add(gname)
        if self.quorum != NONE and self.quorum not in defined:
            raise PolicyError(
                f"quorum {self.quorum!r} is not a defined witness or group", rule="policy-undefined"
            )
        if max(len(self.logs), len(self.witnesses), len(self.groups)) > MAX_ITEMS:
            raise PolicyError(f"policy lists more than {MAX_ITEMS} of one kind", rule="policy-size")

    # -- parse and format ---------------------------------------------------------------

    @classmethod
    def parse(cls, data: str | bytes) -> Policy:
        """Parse a policy file; :class:`PolicyError` names the line and rule broken."""
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        if len(raw) > MAX_POLICY_SIZE:
            raise PolicyError(f"policy is larger than {MAX_POLICY_SIZE} bytes", rule="policy-size")
        _check_charset(raw)
        # Non-ASCII octets are opaque: surrogateescape keeps them byte-exact.
        text = raw.decode("utf-8", "surrogateescape")
        logs: list[LogEntry] = []
        witnesses: dict[str, WitnessEntry] = {}
        groups: dict[str, Group] = {}
        order: list[str] = []
        quorum: str | None = None
        for lineno, line in enumerate(text.split("\n"), 1):
            tokens = _ws_split(line)
            if not tokens or tokens[0].startswith("#"):
                continue
            kw, args = tokens[0], tokens[1:]
            if kw == "log":
                if len(args) not in (1, 2):
                    raise PolicyError(
                        f"line {lineno}: want 'log <vkey> [<url>]'", rule="policy-syntax"
                    )
                logs.append(
                    LogEntry(
                        _parse_vkey(args[0], lineno, ALG_ED25519, "log"),
                        args[1] if len(args) == 2 else None,
                    )
                )
            elif kw == "witness":
                if len(args) not in (2, 3):
                    raise PolicyError(
                        f"line {lineno}: want 'witness <name> <vkey> [<url>]'", rule="policy-syntax"
                    )
                name = args[0]
                if name == NONE or name in witnesses or name in groups:
                    raise PolicyError(
                        f"line {lineno}: name {name!r} is already taken", rule="policy-name"
                    )
                vkey = _parse_vkey(args[1], lineno, ALG_COSIGNATURE_V1, f"witness {name}")
                witnesses[name] = WitnessEntry(name, vkey, args[2] if len(args) == 3 else None)
                order.append(name)
            elif kw == "group":
                if len(args) < 3:
                    raise PolicyError(
                        f"line {lineno}: want 'group <name> all|any|<k> <member>...'",
                        rule="policy-syntax",
                    )
                name, spec, members = args[0], args[1], tuple(args[2:])
                if name == NONE or name in witnesses or name in groups:
                    raise PolicyError(
                        f"line {lineno}: name {name!r} is already taken", rule="policy-name"
                    )
                for m in members:
                    if m not in witnesses and m not in groups:
                        raise PolicyError(
                            f"line {lineno}: group member {m!r} is not defined on an earlier line",
                            rule="policy-undefined",
                        )
                groups[name] = Group(name, spec, members)
                order.append(name)
            elif kw == "quorum":
                if len(args) != 1:
                    raise PolicyError(f"line {lineno}: want 'quorum <name>'", rule="policy-syntax")
                if quorum is not None:
                    raise PolicyError(f"line {lineno}: a second quorum line", rule="policy-quorum")
                if args[0] != NONE and args[0] not in witnesses and args[0] not in groups:
                    raise PolicyError(
                        f"line {lineno}: quorum {args[0]!r} is not defined on an earlier line",
                        rule="policy-undefined",
                    )
                quorum = args[0]
            else:
                raise PolicyError(
                    f"line {lineno}: unknown keyword {kw!r} (want log, witness, group, quorum)",
                    rule="policy-syntax",
                )
        if quorum is None:
            raise PolicyError(
                "policy has no quorum line (use 'quorum none' for no witnesses)",
                rule="policy-quorum",
            )
        return cls(tuple(logs), witnesses, groups, quorum, tuple(order))

    def format(self) -> str:
        """The policy as a file: logs, then witnesses and groups in definition order."""
        out = []
        for log in self.logs:
            out.append(f"log {log.vkey}" + (f" {log.url}" if log.url else ""))
        order = self._order or (*self.witnesses, *self.groups)
        for name in order:
            if name in self.witnesses:
                w = self.witnesses[name]
                out.append(f"witness {name} {w.vkey}" + (f" {w.url}" if w.url else ""))
            else:
                g = self.groups[name]
                out.append(f"group {name} {g.spec} {' '.join(g.members)}")
        out.append(f"quorum {self.quorum}")
        return "\n".join(out) + "\n"

    # -- evaluation --------------------------------------------------------------------

    def satisfied(self, names: Iterable[str]) -> bool:
        """Whether cosignatures by the witnesses ``names`` (policy names) meet the quorum."""
        return self._holds(self.quorum, frozenset(names))

    def _holds(self, name: str, cosigned: frozenset[str]) -> bool:
        if name == NONE:
            return True
        if name in self.witnesses:
            return name in cosigned
        g = self.groups[name]
        return sum(self._holds(m, cosigned) for m in g.members) >= g.threshold

    def quorum_witnesses(self) -> list[str]:
        """Every witness that can contribute to the quorum, in definition order."""
        out: list[str] = []

        def walk(name: str) -> None:
            if name == NONE:
                return
            if name in self.witnesses:
                if name not in out:
                    out.append(name)
                return
            for m in self.groups[name].members:
                walk(m)

        walk(self.quorum)
        return out

    def describe_quorum(self, name: str | None = None) -> str:
        """A readable form of the quorum rule, e.g. ``2 of (w1, w2, w3)``."""
        name = self.quorum if name is None else name
        if name == NONE or name in self.witnesses:
            return name
        g = self.groups[name]
        inner = ", ".join(self.describe_quorum(m) for m in g.members)
        k = g.threshold
        return f"{'all' if k == len(g.members) else k} of ({inner})"

    def witness_for(self, sig: Signature) -> str | None:
        """The policy name of the witness whose key made ``sig``, if any."""
        for name, w in self.witnesses.items():
            if sig.name == w.vkey.name and sig.key_id == w.vkey.key_id:
                return name
        return None

    def log_keys(self) -> list[VerifierKey]:
        return [log.vkey for log in self.logs]

    def verify(
        self, note: bytes, *, origin: str | None = None, now: int | None = None
    ) -> VerifiedCheckpoint:
        """Verify a checkpoint note: a listed log's signature, then the witness quorum.

        ``origin``, if given, must be the checkpoint's. With ``now`` (POSIX
        seconds), cosignatures stamped too far in the future are not counted.
        Raises :class:`NoteError` for a bad or unsigned note and
        :class:`WitnessError` naming the missing witnesses when the quorum fails.
        """
        if not self.logs:
            raise NoteError(
                "the policy lists no log key to verify the checkpoint with", rule="policy-no-log"
            )
        opened = open_note(note, self.log_keys())
        cp = Checkpoint.parse(opened.text)
        log_key = next((v for v, _ in opened.verified if v.name == cp.origin), None)
        if log_key is None:
            signers = ", ".join(v.name for v, _ in opened.verified)
            raise NoteError(
                f"checkpoint origin {cp.origin!r} is not the name of the log key that signed it "
                f"({signers})",
                rule="checkpoint-origin",
            )
        if origin is not None and cp.origin != origin:
            raise NoteError(
                f"checkpoint origin {cp.origin!r} is not {origin!r}", rule="checkpoint-origin"
            )
        cosigners: dict[str, int] = {}
        rejected: list[str] = []
        for sig in opened.unverified:
            name = self.witness_for(sig)
            if name is None or name in cosigners:
                continue
            try:
                ts = verify_cosignature(opened.text, sig, self.witnesses[name].vkey)
            except (NoteError, WitnessError) as e:
                rejected.append(f"{name} ({e.message})")
                continue
            if now is not None and ts > now + MAX_FUTURE_SKEW:
                rejected.append(f"{name} (timestamp {ts} is in the future)")
                continue
            cosigners[name] = ts
        if not self.satisfied(cosigners):
            missing = [w for w in self.quorum_witnesses() if w not in cosigners]
            msg = (
                f"checkpoint {cp.origin} size {cp.size} does not meet the witness quorum "
                f"{self.describe_quorum()}: cosigned by "
                f"{', '.join(sorted(cosigners)) or 'no witness'}; missing {', '.join(missing)}"
            )
            if rejected:
                msg += f"; rejected: {'; '.join(rejected)}"
            raise WitnessError(msg, rule="quorum-not-met")
        return VerifiedCheckpoint(cp, log_key, cosigners)

    def check(
        self, note: bytes, *, origin: str | None = None, now: int | None = None
    ) -> Checkpoint:
        """Like :meth:`verify`, returning just the checkpoint."""
        return self.verify(note, origin=origin, now=now).checkpoint


def as_policy(policy_or_vkey: Policy | VerifierKey | str) -> Policy:
    """A :class:`Policy` from a policy, a log verifier key, or the text of either."""
    if isinstance(policy_or_vkey, Policy):
        return policy_or_vkey
    if isinstance(policy_or_vkey, VerifierKey):
        return Policy.for_log(policy_or_vkey)
    if isinstance(policy_or_vkey, str):
        # A vkey is one token; a policy has at least a keyword and an argument.
        if any(c in policy_or_vkey.strip() for c in " \t\n"):
            return Policy.parse(policy_or_vkey)
        return Policy.for_log(parse_vkey(policy_or_vkey))
    raise PolicyError(
        f"not a policy or verifier key: {type(policy_or_vkey).__name__}", rule="policy-type"
    )
