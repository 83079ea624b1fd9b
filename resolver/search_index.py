"""The search index: schema, writes and queries over one SQLite file. No network, no asyncio.

The index is derived data, like Redis (DESIGN.md §6): sync writes it from the
entries it verified (:mod:`resolver.search_writer`), nothing else writes it, and
deleting the file rebuilds it from the logs on the next start of sync.

Tables (``id`` is an identifier's row):

``ids``       one row per live identifier ``P/S`` and per live prefix record
              ``0.NA/P``: its ``prefix`` (``0.NA`` for a prefix record), its
              ``scope`` (the prefix whose revocation hides it: ``P``), origin,
              version and canonical record bytes.
``vals``      one row per value: its type and its data as text (structured data as
              canonical JSON), indexed by an FTS5 table (``text``, trigram
              tokenizer: substrings and wildcards) that holds no copy of it, and
              no positions (``detail=none``: a trigram's rows are enough, since
              FTS5 checks ``LIKE`` on the text itself). Places (GEO, GEO_BOX) are
              searched by ``geo``, not as text.
``geo``       an R*Tree of the GEO points and GEO_BOX extents, one box per value.
``revoked``   prefixes under a revoked delegation: their rows stay, hidden from
              every query, so a re-delegation shows them again at no cost.
``ranges``    range mints (``P``, letters, width, start, count): they can name
              billions of identifiers, so they are counted, not listed.
``cursors``   per log, how many of its entries the index holds.
``meta``      the root of trust the index was built under.

Queries (:class:`Query`, parsed by :func:`parse_query`) select candidate rows
with the indexes, in identifier order after a cursor, and each candidate is
checked exactly here (:func:`matches`), so the indexes only need to find a
superset. Every query runs under a deadline (:func:`deadline`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cityid.errors import CityIdError, LedgerError, OperationError
from cityid.identifiers import Prefix
from cityid.records import Record, decode_trusted

from .layout import Change, IdChange, MintChange, PrefixChange, RangeChange, RevokeChange

SCHEMA_VERSION = "1"
MAX_LIMIT = 1000  # results per page
DEFAULT_LIMIT = 100
MAX_RADIUS_KM = 500.0
MAX_TERMS = 8
MAX_TYPES = 32  # type parameters
MAX_CURSOR = 512  # characters of a cursor
MAX_QUERY = 256  # characters of q, and of each B2HANDLE pattern
MIN_RUN = 3  # a term needs this many characters in a row without a wildcard (one trigram)
DEADLINE_S = 2.0  # a query taking longer is stopped (503, Retry-After)
EARTH_KM = 6371.0088
NA = "0.NA"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors(origin TEXT PRIMARY KEY, applied INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ids(
    id INTEGER PRIMARY KEY, handle TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
    scope TEXT NOT NULL, origin TEXT NOT NULL, version INTEGER NOT NULL, record BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS ids_scope ON ids(scope);
CREATE TABLE IF NOT EXISTS vals(
    vid INTEGER PRIMARY KEY, id INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS vals_id ON vals(id);
CREATE INDEX IF NOT EXISTS vals_type ON vals(type, id);
CREATE VIRTUAL TABLE IF NOT EXISTS text USING fts5(
    data, content='vals', content_rowid='vid', tokenize='trigram', detail='none',
    columnsize=0);
CREATE VIRTUAL TABLE IF NOT EXISTS geo USING rtree(vid, s, n, w, e, +id INTEGER);
CREATE TABLE IF NOT EXISTS revoked(prefix TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ranges(
    prefix TEXT NOT NULL, letters TEXT NOT NULL, width INTEGER NOT NULL,
    start INTEGER NOT NULL, count INTEGER NOT NULL, origin TEXT NOT NULL,
    PRIMARY KEY (prefix, letters, width, start)) WITHOUT ROWID;
"""


class QueryError(OperationError):
    """A search request breaks a rule (HTTP 400, naming it)."""

    rule = "bad-query"


class SearchBusy(LedgerError):
    """A query ran past its deadline (HTTP 503 with Retry-After: Handle's "server too busy")."""

    rule = "search-deadline"


class IndexUnavailable(LedgerError):
    """No index to read yet: sync has not created it."""

    rule = "search-unavailable"


# -- opening ---------------------------------------------------------------------------------


def open_writer(path: str, trust: str) -> sqlite3.Connection:
    """The one read-write connection (sync's), WAL mode; emptied if built under another
    root of trust (``trust``: the root origin and anchor) or schema."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # the logs, not this file, are the truth
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: a bulk load touches every index
    conn.executescript(SCHEMA)
    have = dict(conn.execute("SELECT k, v FROM meta").fetchall())
    if have and (have.get("schema") != SCHEMA_VERSION or have.get("trust") != trust):
        reset(conn)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?), ('trust', ?)",
                 (SCHEMA_VERSION, trust))  # fmt: skip
    return conn


def reset(conn: sqlite3.Connection) -> None:
    """Empty every table: the next sync start refills it from the logs."""
    with transaction(conn):
        for t in ("meta", "cursors", "ids", "vals", "geo", "revoked", "ranges"):
            conn.execute(f"DELETE FROM {t}")  # our own table names
        conn.execute("INSERT INTO text(text) VALUES ('delete-all')")


def open_reader(path: str) -> sqlite3.Connection:
    """A read-only connection (the HTTP fronts' own process may differ from sync's)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("SELECT 1 FROM ids LIMIT 1")
    except sqlite3.Error as e:
        raise IndexUnavailable(f"the search index is not built yet ({e})") from e
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def deadline(conn: sqlite3.Connection, seconds: float) -> Iterator[None]:
    """Stop whatever ``conn`` runs after ``seconds`` (:class:`SearchBusy`)."""
    end = time.monotonic() + seconds
    conn.set_progress_handler(lambda: time.monotonic() > end, 2000)
    try:
        yield
    except sqlite3.OperationalError as e:
        if "interrupt" in str(e):
            raise SearchBusy(f"the query took longer than {seconds:g} s: narrow it") from e
        raise
    finally:
        conn.set_progress_handler(None, 0)
    if time.monotonic() > end:
        raise SearchBusy(f"the query took longer than {seconds:g} s: narrow it")


# -- writing -----------------------------------------------------------------------------------


def cursors(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT origin, applied FROM cursors").fetchall())


#: Values searched by place, never as text.
PLACES = frozenset({"GEO", "GEO_BOX"})


def value_text(data: Any) -> str:
    return data if isinstance(data, str) else json.dumps(data, sort_keys=True, ensure_ascii=False)


def extent(vtype: str, data: Any) -> tuple[float, float, float, float] | None:
    """(south, north, west, east) of a GEO or GEO_BOX value (checked when it was minted)."""
    if vtype not in ("GEO", "GEO_BOX") or not isinstance(data, str):
        return None
    nums = [float(x) for x in data.split(",")]
    if vtype == "GEO":
        return nums[0], nums[0], nums[1], nums[1]
    return nums[0], nums[2], nums[1], nums[3]


Row = tuple[str, str, str, int, bytes]  # prefix, scope, origin, version, record


def _wire_values(record: bytes) -> list[tuple[str, Any]]:
    """(type, data) of each value of a canonical record (sync checked it): msgpack's
    ``[[index, type, data, ttl, timestamp], ...]``, read without building a Record."""
    return [(v[1], v[2]) for v in msgpack.unpackb(record, raw=False)]


def _chunks(items: Sequence[Any], n: int = 500) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _write_rows(conn: sqlite3.Connection, final: dict[str, Row | None]) -> None:
    """Make ``ids`` (and its values) hold ``final``: handle -> its row, or None to remove it.

    In bulk: a slice of a CSV mint is thousands of new identifiers, written with a few
    ``executemany`` rather than statements each.
    """
    handles = list(final)
    have: dict[str, int] = {}
    for part in _chunks(handles):
        sql = f"SELECT handle, id FROM ids WHERE handle IN ({_marks(len(part))})"
        have.update(conn.execute(sql, part).fetchall())
    old = list(have.values())
    for part in _chunks(old):
        got = conn.execute(f"SELECT vid, type, data FROM vals WHERE id IN ({_marks(len(part))})",
                           part).fetchall()  # fmt: skip
        texts = [(v, d) for v, t, d in got if t not in PLACES]
        conn.executemany("INSERT INTO text(text, rowid, data) VALUES ('delete', ?, ?)", texts)
        conn.executemany("DELETE FROM geo WHERE vid = ?", [(v,) for v, t, _ in got if t in PLACES])
        conn.execute(f"DELETE FROM vals WHERE id IN ({_marks(len(part))})", part)
    gone = [(have[h],) for h, row in final.items() if row is None and h in have]
    conn.executemany("DELETE FROM ids WHERE id = ?", gone)
    next_id = (conn.execute("SELECT max(id) FROM ids").fetchone()[0] or 0) + 1
    next_vid = (conn.execute("SELECT max(vid) FROM vals").fetchone()[0] or 0) + 1
    new_ids, changed, vals, geo = [], [], [], []
    for h, row in final.items():
        if row is None:
            continue
        prefix, scope, origin, version, record = row
        rid = have.get(h)
        if rid is None:
            rid, next_id = next_id, next_id + 1
            new_ids.append((rid, h, prefix, scope, origin, version, record))
        else:
            changed.append((origin, version, record, rid))
        for vtype, data in _wire_values(record):
            vals.append((next_vid, rid, vtype, value_text(data)))
            box = extent(vtype, data)
            if box is not None:
                geo.append((next_vid, *box, rid))
            next_vid += 1
    conn.executemany("INSERT INTO ids VALUES (?, ?, ?, ?, ?, ?, ?)", new_ids)
    conn.executemany("UPDATE ids SET origin = ?, version = ?, record = ? WHERE id = ?", changed)
    conn.executemany("INSERT INTO vals VALUES (?, ?, ?, ?)", vals)
    texts = [(v[0], v[3]) for v in vals if v[2] not in PLACES]
    conn.executemany("INSERT INTO text(rowid, data) VALUES (?, ?)", texts)
    conn.executemany("INSERT INTO geo VALUES (?, ?, ?, ?, ?, ?)", geo)


def apply(conn: sqlite3.Connection, changes: Sequence[Change], origin: str, applied: int) -> None:
    """Write sync's ``changes`` (later ones win) and ``origin``'s cursor, in one transaction."""
    final: dict[str, Row | None] = {}
    with transaction(conn):
        for c in changes:
            if isinstance(c, MintChange):
                p = c.prefix
                for suffix, version, record in c.items:
                    final[f"{p}/{suffix}"] = (p, p, c.origin, version, record)
            elif isinstance(c, IdChange):
                row = None if c.deleted or c.record is None else (
                    c.prefix, c.prefix, c.origin, c.version, c.record)  # fmt: skip
                final[f"{c.prefix}/{c.suffix}"] = row
            elif isinstance(c, PrefixChange):
                row = None if c.deleted or c.record is None else (
                    NA, c.prefix, c.origin, c.version, c.record)  # fmt: skip
                final[f"{NA}/{c.prefix}"] = row
            elif isinstance(c, RevokeChange):
                sql = ("INSERT OR IGNORE INTO revoked VALUES (?)" if c.revoked
                       else "DELETE FROM revoked WHERE prefix = ?")  # fmt: skip
                conn.execute(sql, (c.prefix,))
            elif isinstance(c, RangeChange):
                row = (c.prefix, c.letters, c.width, c.start, c.count, c.origin)
                conn.execute("INSERT OR REPLACE INTO ranges VALUES (?, ?, ?, ?, ?, ?)", row)
        _write_rows(conn, final)
        conn.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?)", (origin, applied))


# -- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """One word of ``q``: a substring of some value, or (with ``*``) a whole-value pattern."""

    text: str
    runs: tuple[str, ...]  # its wildcard-free runs of MIN_RUN characters or more
    pattern: re.Pattern[str]

    def match(self, value: str) -> bool:
        return self.pattern.search(value) is not None


@dataclass(frozen=True, slots=True)
class Circle:
    lat: float
    lon: float
    km: float

    def box(self) -> tuple[float, float, float, float]:
        dlat = math.degrees(self.km / EARTH_KM)
        cos = math.cos(math.radians(self.lat))
        dlon = 180.0 if cos < 1e-6 else min(180.0, dlat / cos)
        return self.lat - dlat, self.lat + dlat, self.lon - dlon, self.lon + dlon


@dataclass(frozen=True, slots=True)
class Query:
    terms: tuple[Term, ...] = ()
    types: tuple[str, ...] = ()  # the values a term or a type filter looks at
    prefix: str = ""  # a subtree: identifiers under it and its descendants' prefix records
    exact_prefix: str = ""  # identifiers directly under it (Handle's listing)
    near: Circle | None = None
    bbox: tuple[float, float, float, float] | None = None  # south, north, west, east
    limit: int = DEFAULT_LIMIT
    after: str = ""  # the last identifier of the previous page
    fields: dict[str, Term] = field(default_factory=dict)  # B2HANDLE: TYPE -> pattern

    def empty(self) -> bool:
        return not (self.terms or self.types or self.prefix or self.exact_prefix
                    or self.near or self.bbox or self.fields)  # fmt: skip


def _words(q: str) -> list[str]:
    """``q`` split on white space; ``"..."`` keeps one word's spaces."""
    if q.count('"') % 2:
        raise QueryError('q has an unbalanced quote: close every "', rule="unbalanced-quotes")
    out: list[str] = []
    for i, part in enumerate(q.split('"')):
        if i % 2:
            if part.strip():
                out.append(part)
        else:
            out += part.split()
    return out


def term(text: str, *, whole: bool | None = None) -> Term:
    """A term: a substring unless it has ``*`` (or ``whole``), then a whole-value pattern."""
    if not text.replace("*", "").strip():
        raise QueryError(f"{text!r} is only wildcards: give some characters to look for",
                         rule="only-wildcards")  # fmt: skip
    pieces = text.split("*")
    runs = tuple(r for p in pieces for r in re.split(r"[%_]", p) if len(r) >= MIN_RUN)
    if not runs:
        raise QueryError(
            f"{text!r} has no {MIN_RUN} characters in a row without a wildcard: too short to "
            "look up in the index",
            rule="pattern-too-short",
        )
    body = ".*".join(re.escape(p) for p in pieces)
    whole = "*" in text if whole is None else whole
    pattern = re.compile(f"^{body}$" if whole else body, re.IGNORECASE | re.DOTALL)
    return Term(text, runs, pattern)


def parse_float(text: str, what: str, rule: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise QueryError(f"{what} {text[:40]!r} is not a number", rule=rule) from None
    if not math.isfinite(x):
        raise QueryError(f"{what} {text[:40]!r} is not a finite number", rule=rule)
    return x


def parse_near(near: str, radius: str | None) -> Circle:
    parts = near.split(",")
    if len(parts) != 2:
        raise QueryError(f"near={near[:60]!r} is not 'latitude,longitude'", rule="bad-near")
    lat, lon = (parse_float(p, "near", "bad-near") for p in parts)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise QueryError(f"near={near[:60]!r} is not on the globe", rule="bad-near")
    if radius is None:
        raise QueryError("near needs radius=KM", rule="bad-radius")
    km = parse_float(radius, "radius", "bad-radius")
    if not 0 < km <= MAX_RADIUS_KM:
        raise QueryError(f"radius {radius[:20]} km is not in (0, {MAX_RADIUS_KM:g}] km",
                         rule="radius-over-cap")  # fmt: skip
    return Circle(lat, lon, km)


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``south,west,north,east`` (GEO_BOX's order) -> (south, north, west, east)."""
    parts = text.split(",")
    if len(parts) != 4:
        raise QueryError(f"bbox={text[:80]!r} is not 'south,west,north,east'", rule="bad-bbox")
    s, w, n, e = (parse_float(p, "bbox", "bad-bbox") for p in parts)
    if not (-90 <= s <= n <= 90 and -180 <= w <= e <= 180):
        raise QueryError(
            f"bbox={text[:80]!r} is not a box: south <= north in -90..90 and west <= east in "
            "-180..180 (split a box across the antimeridian in two)",
            rule="bad-bbox",
        )
    return s, n, w, e


def parse_limit(text: str | None, default: int = DEFAULT_LIMIT, what: str = "limit") -> int:
    if text is None:
        return default
    if not text.isdigit() or len(text) > 9:
        raise QueryError(f"{what}={text[:20]!r} is not a whole number", rule="bad-limit")
    n = int(text)
    if not 1 <= n <= MAX_LIMIT:
        raise QueryError(f"{what}={n} is not in 1..{MAX_LIMIT}", rule="limit-over-cap")
    return n


def parse_prefix(text: str) -> str:
    try:
        return str(Prefix.parse(text.strip()))
    except CityIdError as e:
        raise QueryError(f"prefix={text[:60]!r}: {e.message}", rule="bad-prefix") from e


def parse_types(values: Sequence[str]) -> tuple[str, ...]:
    if len(values) > MAX_TYPES:
        raise QueryError(f"{len(values)} type parameters (at most {MAX_TYPES})", rule="bad-type")
    out: list[str] = []
    for v in values:
        bounded("type", v, 64)
        for t in v.split(","):
            t = t.strip().upper()
            if not re.fullmatch(r"[A-Z0-9_./]{1,64}", t):
                raise QueryError(f"type={t[:40]!r} is not a value type", rule="bad-type")
            out.append(t)
    return tuple(dict.fromkeys(out))


def bounded(name: str, text: str, most: int) -> str:
    if len(text) > most:
        raise QueryError(f"{name} is over {most} characters", rule="too-long")
    return text


def flag(args: Any, name: str) -> bool:
    """A ``true``/``false`` parameter (absent: false)."""
    value = args.get(name, "false")
    if value not in ("true", "false"):
        raise QueryError(f"{name}={value[:20]!r} is not true or false", rule="bad-flag")
    return bool(value == "true")


def encode_cursor(handle: str) -> str:
    return base64.urlsafe_b64encode(handle.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> str:
    bounded("cursor", text, MAX_CURSOR)
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        return raw.decode()
    except (ValueError, UnicodeDecodeError):
        raise QueryError("cursor is not one this server gave", rule="bad-cursor") from None


def parse_query(args: Any) -> Query:
    """A :class:`Query` from ``/api/search``'s parameters (a multidict of strings)."""
    q = args.get("q", "")
    if len(q) > MAX_QUERY:
        raise QueryError(f"q is over {MAX_QUERY} characters", rule="query-too-long")
    for name, most in (("near", 64), ("radius", 32), ("bbox", 128)):
        bounded(name, args.get(name, ""), most)
    words = _words(q)
    if len(words) > MAX_TERMS:
        raise QueryError(f"q has {len(words)} words (at most {MAX_TERMS})", rule="too-many-terms")
    near = args.get("near")
    radius = args.get("radius")
    if radius is not None and near is None:
        raise QueryError("radius needs near=LAT,LON", rule="bad-near")
    query = Query(
        terms=tuple(term(w) for w in words),
        types=parse_types(args.getall("type", [])),
        prefix=parse_prefix(args["prefix"]) if "prefix" in args else "",
        near=parse_near(near, radius) if near is not None else None,
        bbox=parse_bbox(args["bbox"]) if args.get("bbox") is not None else None,
        limit=parse_limit(args.get("limit")),
        after=decode_cursor(args["cursor"]) if args.get("cursor") else "",
    )
    if query.empty():
        raise QueryError("give q, type, prefix, near or bbox: a search of everything is a "
                         "listing (GET /api/handles?prefix=P)", rule="empty-query")  # fmt: skip
    return query


# -- exact checks (the indexes find candidates; these decide) ---------------------------------


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def _box_km(box: tuple[float, float, float, float], lat: float, lon: float) -> float:
    s, n, w, e = box
    # The point of the box nearest (lat, lon) (boxes do not cross the antimeridian).
    return _km(lat, lon, min(max(lat, s), n), min(max(lon, w), e))


def distance_km(record: Record, lat: float, lon: float) -> float | None:
    """How far the nearest of ``record``'s places is from (lat, lon); None: it has none."""
    kms = [_box_km(b, lat, lon) for v in record.values if (b := extent(v.type, v.data))]
    return min(kms) if kms else None


def _in_circle(box: tuple[float, float, float, float], c: Circle) -> bool:
    return _box_km(box, c.lat, c.lon) <= c.km


def _in_bbox(box: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return box[0] <= b[1] and box[1] >= b[0] and box[2] <= b[3] and box[3] >= b[2]


def matches(q: Query, handle: str, prefix: str, scope: str, record: Record) -> bool:
    """Whether one live, unrevoked row answers ``q``: the definition the indexes serve."""
    if q.prefix and not (scope == q.prefix or scope.startswith(q.prefix + ".")):
        return False
    if q.exact_prefix and prefix != q.exact_prefix:
        return False
    values = record.values
    pool = [v for v in values if v.type in q.types] if q.types else values
    if q.types and not pool:
        return False
    texts = [value_text(v.data) for v in pool if v.type not in PLACES]
    if not all(any(t.match(x) for x in texts) for t in q.terms):
        return False
    for vtype, t in q.fields.items():
        if vtype in PLACES or not any(t.match(value_text(v.data)) for v in values
                                      if v.type == vtype):  # fmt: skip
            return False
    if q.near or q.bbox:
        boxes = [b for v in values if (b := extent(v.type, v.data)) is not None]
        if q.near and not any(_in_circle(b, q.near) for b in boxes):
            return False
        if q.bbox and not any(_in_bbox(b, q.bbox) for b in boxes):
            return False
    return True


# -- running a query -----------------------------------------------------------------------------


RARE = 3  # trigrams a term is looked up by


def rare_match(t: Term) -> str:
    """An FTS5 ``MATCH`` for :data:`RARE` of ``t``'s trigrams likely to be rare ("": use
    ``LIKE``).

    FTS5 intersects every trigram of a ``LIKE`` pattern, and a URL's first ones (``htt``,
    ``tps``...) are in every row; counting each trigram's rows would read those lists
    too. Identifiers and URLs are most specific in their digits and at their end, so
    those trigrams are chosen: the candidates are a superset, and :func:`matches`
    decides. Only ASCII trigrams are chosen (others fold as SQLite folds them).
    """
    grams: dict[str, tuple[int, int]] = {}
    for r in t.runs:
        for i in range(len(r) - 2):
            g = r[i : i + 3].lower()
            if g.isascii():
                grams[g] = (-sum(c.isdigit() for c in g), -i)
    rare = sorted(grams, key=grams.__getitem__)[:RARE]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in rare)


def _text_filter(t: Term, types: Sequence[str], args: list[Any], match: str) -> str:
    if match:
        cond = "text MATCH ?"
        args.append(match)
    else:
        cond = " AND ".join("data LIKE ?" for _ in t.runs)
        args += [f"%{r}%" for r in t.runs]
    sql = f"SELECT id FROM vals WHERE vid IN (SELECT rowid FROM text WHERE {cond})"
    if types:
        # "+type": not by the type index, which would scan every value of the type.
        sql += f" AND +type IN ({','.join('?' * len(types))})"
        args += types
    return f"i.id IN ({sql})"


def candidates_sql(q: Query, batch: int, picks: Sequence[str] = ()) -> tuple[str, list[Any]]:
    """The SQL for the next ``batch`` candidate rows of ``q`` after ``q.after``; ``picks``:
    the :func:`rare_match` of each term then each field ("": by ``LIKE``)."""
    picks = list(picks) or [""] * (len(q.terms) + len(q.fields))
    where = ["i.handle > ?", "i.scope NOT IN (SELECT prefix FROM revoked)"]
    args: list[Any] = [q.after]
    if q.prefix:
        where.append("(i.scope = ? OR (i.scope > ? AND i.scope < ?))")
        args += [q.prefix, q.prefix + ".", q.prefix + "/"]
    if q.exact_prefix:
        where.append("i.handle > ? AND i.handle < ?")
        args += under(q.exact_prefix)
    for t, pick in zip(q.terms, picks, strict=False):
        where.append(_text_filter(t, q.types, args, pick))
    for (vtype, t), pick in zip(q.fields.items(), picks[len(q.terms) :], strict=False):
        where.append(_text_filter(t, (vtype,), args, pick))
    if q.types and not q.terms:
        marks = ",".join("?" * len(q.types))
        where.append(f"i.id IN (SELECT id FROM vals WHERE type IN ({marks}))")
        args += q.types
    for box in (q.near.box() if q.near else None, q.bbox):
        if box is not None:
            where.append(
                "i.id IN (SELECT id FROM geo WHERE s <= ? AND n >= ? AND w <= ? AND e >= ?)"
            )
            args += [box[1], box[0], box[3], box[2]]
    sql = (f"SELECT i.handle, i.prefix, i.scope, i.record FROM ids i WHERE {' AND '.join(where)} "
           "ORDER BY i.handle LIMIT ?")  # fmt: skip
    return sql, [*args, batch]


@dataclass(frozen=True, slots=True)
class Hit:
    handle: str
    record: bytes


def search(
    conn: sqlite3.Connection, q: Query, seconds: float = DEADLINE_S
) -> tuple[list[Hit], str]:
    """Up to ``q.limit`` hits after ``q.after``, and the cursor of the next page ("" at the end)."""
    hits: list[Hit] = []
    after = q.after
    batch = min(4 * (q.limit + 1), 4000)
    with deadline(conn, seconds):
        picks = [rare_match(t) for t in (*q.terms, *q.fields.values())]
        while len(hits) <= q.limit:
            sql, args = candidates_sql(_after(q, after), batch, picks)
            rows = conn.execute(sql, args).fetchall()
            for handle, prefix, scope, record in rows:
                if matches(q, handle, prefix, scope, decode_trusted(record)):
                    hits.append(Hit(handle, record))
                    if len(hits) > q.limit:
                        break
            if len(rows) < batch:
                break
            after = rows[-1][0]
    more = len(hits) > q.limit
    hits = hits[: q.limit]
    return hits, encode_cursor(hits[-1].handle) if more and hits else ""


def _after(q: Query, after: str) -> Query:
    return q if after == q.after else dataclasses.replace(q, after=after)


def page(conn: sqlite3.Connection, prefix: str, page_no: int, size: int,
         seconds: float = DEADLINE_S) -> tuple[int, list[str]]:  # fmt: skip
    """Handle's listing: how many identifiers directly under ``prefix``, and page ``page_no``."""
    hidden = "scope IN (SELECT prefix FROM revoked)"
    with deadline(conn, seconds):
        if conn.execute("SELECT EXISTS (SELECT 1 FROM revoked WHERE prefix = ?)",
                        (prefix,)).fetchone()[0]:  # fmt: skip
            return 0, []
        total = count(conn, prefix)
        rows = conn.execute(
            f"SELECT handle FROM ids WHERE handle > ? AND handle < ? AND NOT {hidden} "
            "ORDER BY handle LIMIT ? OFFSET ?",
            (*under(prefix), size, page_no * size),
        ).fetchall()
    return int(total), [r[0] for r in rows]


def prefix_summary(conn: sqlite3.Connection, prefix: str,
                   seconds: float = DEADLINE_S) -> dict[str, Any] | None:  # fmt: skip
    """What ``/api/prefixes/{P}`` says of ``prefix`` (None: no such prefix record)."""
    with deadline(conn, seconds):
        row = conn.execute(
            "SELECT origin, version, record FROM ids WHERE handle = ?", (f"{NA}/{prefix}",)
        ).fetchone()
        revoked = bool(conn.execute("SELECT EXISTS (SELECT 1 FROM revoked WHERE prefix = ?)",
                                    (prefix,)).fetchone()[0])  # fmt: skip
        lo, hi = prefix + ".", prefix + "/"
        shown = "scope NOT IN (SELECT prefix FROM revoked)"
        children = [
            s for (s,) in conn.execute(
                f"SELECT scope FROM ids WHERE handle > ? AND handle < ? AND {shown} "
                "ORDER BY handle", (f"{NA}/{lo}", f"{NA}/{hi}"))
            if "." not in s[len(lo):]
        ]  # fmt: skip
        if row is None and not revoked and not children:
            return None
        direct = count(conn, prefix)
        subtree = conn.execute(
            "SELECT count(*) FROM ids "
            f"WHERE prefix != ? AND (scope = ? OR (scope > ? AND scope < ?)) AND {shown}",
            (NA, prefix, lo, hi),
        ).fetchone()[0]
        box = conn.execute(
            "SELECT min(g.s), max(g.n), min(g.w), max(g.e) FROM geo g JOIN ids i ON i.id = g.id "
            f"WHERE (i.scope = ? OR (i.scope > ? AND i.scope < ?)) AND i.{shown}",
            (prefix, lo, hi),
        ).fetchone()
        ranges = conn.execute(
            "SELECT letters, width, start, count, origin FROM ranges WHERE prefix = ? "
            "ORDER BY letters, width, start",
            (prefix,),
        ).fetchall()
    out: dict[str, Any] = {
        "prefix": prefix,
        # "anchor": no log holds its record (a root of trust), only its children's.
        "status": "revoked" if revoked else "delegated" if row is not None else "anchor",
        "children": [{"prefix": c, "url": f"/api/prefixes/{c}"} for c in children],
        "identifiers": int(direct),
        "identifiers_in_subtree": int(subtree),
        "ranges": [
            {"letters": r[0], "width": r[1], "start": r[2], "count": r[3], "log": r[4]}
            for r in ranges
        ],
        "extent": None
        if box[0] is None
        else {"south": box[0], "west": box[2], "north": box[1], "east": box[3]},
    }
    if row is not None:
        out["log"] = row[0]
        out["version"] = row[1]
        out["record"] = decode_trusted(row[2]).to_json(f"{NA}/{prefix}")
    return out


def delegated(conn: sqlite3.Connection, seconds: float = DEADLINE_S) -> list[tuple[str, int]]:
    """Every prefix delegated (not revoked), with how many identifiers are directly under it."""
    with deadline(conn, seconds):
        rows = conn.execute(
            "SELECT scope FROM ids WHERE handle > ? AND handle < ? "
            "AND scope NOT IN (SELECT prefix FROM revoked) ORDER BY handle",
            under(NA),
        ).fetchall()
        return [(s, count(conn, s)) for (s,) in rows]


def under(prefix: str) -> list[str]:
    """The bounds of the handles directly under ``prefix`` ('/' + 1 is '0')."""
    return [prefix + "/", prefix + "0"]


def count(conn: sqlite3.Connection, prefix: str) -> int:
    """Identifiers directly under ``prefix`` (a range of the handle index)."""
    sql = "SELECT count(*) FROM ids WHERE handle > ? AND handle < ?"
    return int(conn.execute(sql, under(prefix)).fetchone()[0])


def size(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM ids").fetchone()[0])
