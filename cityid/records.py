"""Records: lists of typed values, the Handle data model.

A value has ``index``, ``type``, ``data``, ``ttl`` and ``timestamp``. A record is
a tuple of values with distinct indexes, kept sorted by index. There is one
canonical encoding, msgpack, used for hashing, the ledger, Redis and the wire:
each value is the array ``[index, type, data, ttl, timestamp]``, where ``data``
is a string or, for structured types, a map with sorted keys. Decoding checks
that re-encoding gives back the same bytes, so no second encoding of one record
is ever accepted.
"""

from __future__ import annotations

import math
import re
import string
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

import msgpack

from .errors import RecordError

MAX_VALUES = 32
MAX_RECORD_BYTES = 8192
MAX_DATA_CHARS = 4096
MAX_URL_CHARS = 2048
MAX_INDEX = 2**31 - 1
MAX_TTL = 2**31 - 1
DEFAULT_TTL = 86400

_TYPE_RE = re.compile(r"[A-Za-z0-9_./-]{1,64}")
_EMAIL_RE = re.compile(r"[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")
_HOST_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")
# scheme, optional userinfo, a non-empty host (name or [IPv6]), optional port, rest.
_URL_RE = re.compile(
    r"(?i)https?://(?:[^/?#@]*@)?(?:\[[0-9a-f:.]+\]|[^/?#:@\[\]]+)(?::(?P<port>[0-9]{0,5}))?(?:[/?#].*)?",
    re.DOTALL,
)
_DIGITS_RE = re.compile(r"[0-9]{1,11}")  # ASCII only: str.isdigit() admits "²" and "٣"
_URL_BAD_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ADMIN_KEYS = ("handle", "index", "permissions")
_SITE_ROLES = ("registrar", "ledger", "resolver")

#: cityid's own payloads in a delegation record: where a prefix's services are (a map of
#: registrar, ledger and resolver URLs), and a cityid verifier key (the prefix's key, or a
#: log's checkpoint key named after its origin). Not Handle's HS_SITE and HS_PUBKEY, whose
#: formats are Handle's own; records written before carry them under those two names, and
#: readers take them there too (:func:`sites_of`, :func:`pubkeys_of`).
SITE, PUBKEY = "CITYID_SITE", "CITYID_PUBKEY"
_LEGACY = {SITE: "HS_SITE", PUBKEY: "HS_PUBKEY"}

#: Types with a structured (map) data; everything else carries a string. (HS_SITE keeps the
#: map it had when cityid used it for SITE; Handle's own HS_SITE object is not taken.)
STRUCTURED_TYPES = {"HS_ADMIN": "admin", SITE: "site", "HS_SITE": "site"}

Data = str | Mapping[str, Any]


def _fail(rule: str, message: str) -> RecordError:
    return RecordError(message, rule=rule)


def check_url(url: str, *, what: str = "URL") -> str:
    """An absolute http(s) URL with a host and no white space or control characters."""
    if len(url) > MAX_URL_CHARS:
        raise _fail("url-length", f"{what} is {len(url)} characters (at most {MAX_URL_CHARS})")
    # A printable string has no control character, and no white space but " ".
    if (" " in url or not url.isprintable()) and _URL_BAD_RE.search(url):
        raise _fail(
            "url-charset", f"{what} {url[:80]!r} contains white space or a control character"
        )
    m = _URL_RE.fullmatch(url)
    if m is None:
        scheme = url.split(":", 1)[0] if ":" in url else "none"
        if scheme.lower() not in ("http", "https"):
            raise _fail(
                "url-scheme", f"{what} {url[:80]!r} has scheme {scheme[:20]!r}: only http and https"
            )
        raise _fail("url-host", f"{what} {url[:80]!r} has no host")
    if m.group("port") and int(m.group("port")) > 65535:
        raise _fail("url-port", f"{what} {url[:80]!r} has port {m.group('port')} (at most 65535)")
    return url


# A decimal of at most 7 places in -999..999 written without leading zeros: its
# canonical text is itself without trailing zeros (a double is far closer than
# 0.5e-7 to it, so formatting it back at 7 places gives the same digits).
_GEO_DECIMALS_RE = re.compile(
    r"(-?(?:0|[1-9][0-9]{0,2})(?:\.[0-9]{1,7})?),(-?(?:0|[1-9][0-9]{0,2})(?:\.[0-9]{1,7})?)"
)


def _plain_deg(text: str) -> str:
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _check_geo(data: str) -> str:
    m = _GEO_DECIMALS_RE.fullmatch(data)
    if m is not None:  # the common case, without formatting floats
        lat_s, lon_s = m.groups()
        if -90 <= float(lat_s) <= 90 and -180 <= float(lon_s) <= 180:
            lat_c, lon_c = _plain_deg(lat_s), _plain_deg(lon_s)
            if lat_c is lat_s and lon_c is lon_s:
                return data
            return f"{lat_c},{lon_c}"
    try:
        lat_s, lon_s = data.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError as e:
        raise _fail("geo-syntax", f"GEO {data[:80]!r} is not 'latitude,longitude'") from e
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise _fail("geo-range", f"GEO {data!r} is not a finite point")
    if not -90 <= lat <= 90:
        raise _fail("geo-range", f"GEO latitude {lat} is outside -90..90")
    if not -180 <= lon <= 180:
        raise _fail("geo-range", f"GEO longitude {lon} is outside -180..180")
    # WGS-84 at 7 decimals is ~1 cm: one canonical text per point.
    return f"{_fmt_deg(lat)},{_fmt_deg(lon)}"


def _check_geo_box(data: str) -> str:
    # Two corners in GEO's own syntax, south-west then north-east: one parser, one spelling.
    parts = data.split(",")
    if len(parts) != 4:
        raise _fail("geo-syntax", f"GEO_BOX {data[:80]!r} is not 'south,west,north,east'")
    try:
        sw = _check_geo(f"{parts[0]},{parts[1]}")
        ne = _check_geo(f"{parts[2]},{parts[3]}")
    except RecordError as e:
        raise _fail(e.rule, f"GEO_BOX: {e.message}") from e
    (s, w), (n, e_) = (tuple(map(float, c.split(","))) for c in (sw, ne))
    if s > n or w > e_:
        raise _fail("geo-range", f"GEO_BOX {data!r}: its south-west corner is not south-west")
    return f"{sw},{ne}"


def _fmt_deg(x: float) -> str:
    text = f"{round(x, 7):.7f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _check_loc(data: str) -> str:
    # 10320/LOC is the Handle multiple-locations XML: <locations><location href=.../>
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as e:
        raise _fail("loc-syntax", f"10320/LOC is not well-formed XML: {e}") from e
    if root.tag != "locations":
        raise _fail("loc-syntax", "10320/LOC must be a <locations> element")
    locs = [el for el in root if el.tag == "location"]
    if not locs:
        raise _fail("loc-syntax", "10320/LOC has no <location> element")
    for el in locs:
        check_url(el.get("href", ""), what="10320/LOC href")
    return data


def _check_ns(data: str) -> str:
    # "host [address ...]": a name server for referrals, with optional glue.
    parts = data.split()
    if not parts or not _HOST_RE.fullmatch(parts[0]):
        raise _fail("ns-syntax", f"NS {data[:80]!r} must start with a host name")
    import ipaddress

    for addr in parts[1:]:
        try:
            ipaddress.ip_address(addr)
        except ValueError as e:
            raise _fail("ns-syntax", f"NS glue {addr!r} is not an IP address") from e
    return " ".join(parts)


#: DS digest types (RFC 4034, 4509, 6605) and their digest lengths in octets.
_DS_DIGESTS = {1: 20, 2: 32, 4: 48}


def _check_ds(data: str) -> str:
    # "TAG ALG DIGEST-TYPE HEX": the DS of a child zone signed elsewhere (DNSSEC), as a
    # parent zone publishes it; canonical with upper-case hex and single spaces.
    parts = data.split()
    rule = "ds-syntax"
    if len(parts) < 4 or not all(_DIGITS_RE.fullmatch(p) for p in parts[:3]):
        raise _fail(rule, f"DS {data[:80]!r} must be 'KEYTAG ALGORITHM DIGEST-TYPE HEX'")
    tag, alg, digest_type = (int(p) for p in parts[:3])
    if tag > 65535 or not 1 <= alg <= 255:
        raise _fail(rule, f"DS {data[:80]!r}: key tag is 0..65535, algorithm 1..255")
    digest = "".join(parts[3:])
    want = _DS_DIGESTS.get(digest_type)
    if want is None:
        raise _fail(rule, f"DS digest type {digest_type} is not 1 (SHA-1), 2 (SHA-256) or 4")
    try:
        raw = bytes.fromhex(digest)
    except ValueError as e:
        raise _fail(rule, f"DS digest {digest[:80]!r} is not hexadecimal") from e
    if len(raw) != want:
        raise _fail(rule, f"DS digest type {digest_type} has {want} octets, not {len(raw)}")
    return f"{tag} {alg} {digest_type} {raw.hex().upper()}"


def _check_admin(data: Mapping[str, Any]) -> dict[str, Any]:
    if set(data) != set(_ADMIN_KEYS):
        raise _fail(
            "admin-syntax", f"HS_ADMIN data has keys {sorted(data)}; want {list(_ADMIN_KEYS)}"
        )
    handle, index, perms = data["handle"], data["index"], data["permissions"]
    if isinstance(handle, str):
        _check_utf8(handle, "HS_ADMIN handle")
    if isinstance(index, str) and _DIGITS_RE.fullmatch(index):
        index = int(index)  # Handle clients send "200" as often as 200
    if not isinstance(handle, str) or not handle or len(handle) > 255:
        raise _fail("admin-syntax", "HS_ADMIN handle must be a non-empty string")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 < index <= MAX_INDEX:
        raise _fail("admin-syntax", f"HS_ADMIN index {index!r} is not a positive integer")
    if not isinstance(perms, str) or not re.fullmatch(r"[01]{1,32}", perms):
        raise _fail(
            "admin-syntax", "HS_ADMIN permissions must be a bit string such as 011111110011"
        )
    return {"handle": handle.upper(), "index": index, "permissions": perms}


def _check_site(data: Mapping[str, Any]) -> dict[str, Any]:
    if not data or not set(data) <= set(_SITE_ROLES):
        raise _fail("site-syntax", f"HS_SITE data names roles among {list(_SITE_ROLES)}")
    out: dict[str, Any] = {}
    for role in sorted(data):
        url = data[role]
        if not isinstance(url, str):
            raise _fail("site-syntax", f"HS_SITE {role} must be a URL string")
        _check_utf8(url, f"HS_SITE {role}")
        out[role] = check_url(url, what=f"HS_SITE {role}")
    return out


def _check_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _fail(
            "data-charset", f"{what} is not valid Unicode (a lone surrogate at {e.start})"
        ) from e


def _check_email(data: str) -> str:
    if not _EMAIL_RE.fullmatch(data):
        raise _fail("email-syntax", f"EMAIL {data[:80]!r} is not an address")
    return data


def _check_pubkey(data: str) -> str:
    from .errors import KeyFormatError
    from .keys import VerifierKey

    try:
        return str(VerifierKey.parse(data))
    except KeyFormatError as e:
        raise _fail("pubkey-syntax", f"{PUBKEY}: {e.message}") from e


#: The string types with their own checks; every other string type is free text.
_STRING_CHECKS = {
    "URL": check_url,
    "EMAIL": _check_email,
    "GEO": _check_geo,
    "GEO_BOX": _check_geo_box,
    "10320/LOC": _check_loc,
    "NS": _check_ns,
    "DS": _check_ds,
    PUBKEY: _check_pubkey,
}


# Checked value types and their canonical spelling ("url" is "URL"): types repeat
# in every record, so each distinct spelling is checked once (bounded memory).
_TYPE_CACHE: dict[str, str] = {}
_TYPE_CACHE_MAX = 4096


def _value_type(vtype: Any) -> str:
    if type(vtype) is str:
        known = _TYPE_CACHE.get(vtype)
        if known is not None:
            return known
        if _TYPE_RE.fullmatch(vtype):
            upper = vtype.upper()
            canonical = upper if upper in _KNOWN_TYPES else vtype
            if len(_TYPE_CACHE) < _TYPE_CACHE_MAX:
                _TYPE_CACHE[vtype] = canonical
            return canonical
    raise _fail("type", f"type {vtype!r} must be 1-64 of A-Z a-z 0-9 _ . / -")


def _checked(index: Any, vtype: Any, data: Any, ttl: Any, timestamp: Any) -> list[Any]:
    """What ``Value.make`` checks: ``[index, type, data, ttl, timestamp]`` normalised."""
    # This runs for every value of every record a registrar or resolver decodes,
    # hence the inlined steps. `type(x) is int` rather than isinstance: it also
    # refuses bool.
    if type(index) is not int or not 0 < index <= MAX_INDEX:
        raise _fail("index", f"index {index!r} is not an integer in 1..{MAX_INDEX}")
    known = _TYPE_CACHE.get(vtype) if type(vtype) is str else None
    vtype = known if known is not None else _value_type(vtype)
    if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
        raise _fail("ttl", f"ttl {ttl!r} is not an integer in 0..{MAX_TTL}")
    ts = int(time.time()) if timestamp is None else timestamp
    if type(ts) is not int or not 0 <= ts < 2**40:
        raise _fail("timestamp", f"timestamp {ts!r} is not a Unix time in seconds")
    structured = STRUCTURED_TYPES.get(vtype)
    if structured is None and type(data) is str:
        # A printable string holds no lone surrogate (it encodes) and no control
        # character: most values skip both scans.
        printable = data.isprintable()
        if not printable and not data.isascii():
            _check_utf8(data, f"{vtype} data")
        if len(data) > MAX_DATA_CHARS:
            raise _fail(
                "data-length", f"{vtype} data is {len(data)} characters (at most {MAX_DATA_CHARS})"
            )
        check = _STRING_CHECKS.get(vtype)
        if check is not None:
            data = check(data)
        elif not printable and _CONTROL_RE.search(data):
            raise _fail("data-charset", f"{vtype} data contains a control character")
    elif structured is not None:
        if not isinstance(data, Mapping):
            raise _fail(f"{structured}-syntax", f"{vtype} data must be an object")
        data = _check_admin(data) if structured == "admin" else _check_site(data)
    else:
        raise _fail("data-type", f"{vtype} data must be a string")
    return [index, vtype, data, ttl, ts]


_new = object.__new__


def _pack(obj: Any) -> bytes:
    # msgpack.packb's keyword handling costs more than packing a small record.
    return msgpack.Packer(use_bin_type=True).pack(obj)


@dataclass(frozen=True, slots=True)
class Value:
    """One typed value of a record."""

    index: int
    type: str
    data: Data
    ttl: int = DEFAULT_TTL
    timestamp: int = 0

    @classmethod
    def make(
        cls, index: int, vtype: str, data: Any, ttl: int = DEFAULT_TTL, timestamp: int | None = None
    ) -> Value:
        """Validate and normalise; ``timestamp`` defaults to now."""
        index, vtype, norm, ttl, ts = _checked(index, vtype, data, ttl, timestamp)
        if cls is not Value:
            return cls(index, vtype, norm, ttl, ts)
        # A frozen dataclass's __init__ costs about as much as the checks above;
        # its slots' descriptors set the same fields directly.
        self = _new(Value)
        _set_index(self, index)
        _set_type(self, vtype)
        _set_data(self, norm)
        _set_ttl(self, ttl)
        _set_timestamp(self, ts)
        return self

    @staticmethod
    def check(
        index: int, vtype: str, data: Any, ttl: int = DEFAULT_TTL, timestamp: int | None = None
    ) -> list[Any]:
        """Check and normalise as :meth:`make` does (same errors), without building a Value.

        Returns the value's canonical wire form ``[index, type, data, ttl,
        timestamp]``, for bulk encoders (``Record.encode_wire``).
        """
        w = _checked(index, vtype, data, ttl, timestamp)
        if type(w[2]) is not str:
            w[2] = dict(sorted(w[2].items()))
        return w

    @property
    def data_format(self) -> str:
        return STRUCTURED_TYPES.get(self.type, "string")

    def to_wire(self) -> list[Any]:
        data = self.data if type(self.data) is str else dict(sorted(self.data.items()))  # type: ignore[union-attr]
        return [self.index, self.type, data, self.ttl, self.timestamp]

    def to_json(self) -> dict[str, Any]:
        """One entry of a Handle REST ``values`` array."""
        data = dict(self.data) if isinstance(self.data, Mapping) else self.data
        return {
            "index": self.index,
            "type": self.type,
            "data": {"format": self.data_format, "value": data},
            "ttl": self.ttl,
            "timestamp": iso_timestamp(self.timestamp),
        }


_set_index = Value.index.__set__  # type: ignore[attr-defined]
_set_type = Value.type.__set__  # type: ignore[attr-defined]
_set_data = Value.data.__set__  # type: ignore[attr-defined]
_set_ttl = Value.ttl.__set__  # type: ignore[attr-defined]
_set_timestamp = Value.timestamp.__set__  # type: ignore[attr-defined]

# Types whose checks apply in any case: "url" is "URL", so "url" cannot skip them.
_KNOWN_TYPES = {
    "URL", "EMAIL", "DESC", "GEO", "GEO_BOX", "HS_ADMIN", "HS_PUBKEY", "HS_SITE", "NS", "NAME",
    "10320/LOC", "DS", SITE, PUBKEY,
}  # fmt: skip


def iso_timestamp(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Record:
    """A validated record: values sorted by index, indexes distinct, bounded size."""

    values: tuple[Value, ...]
    # The canonical encoding, computed once: records are encoded for size checks,
    # signatures, leaves and Redis, often several times each. (Not the structure it
    # encodes: a registrar holds the records of a bulk request until it is applied,
    # and those lists would be a third of the objects the garbage collector scans.)
    _bytes: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.values) > MAX_VALUES:
            raise _fail("too-many-values", f"{len(self.values)} values (at most {MAX_VALUES})")
        indexes = [v.index for v in self.values]
        if len(set(indexes)) != len(indexes):
            dup = next(i for i in indexes if indexes.count(i) > 1)
            raise _fail("duplicate-index", f"index {dup} appears twice")
        if indexes != sorted(indexes):
            object.__setattr__(self, "values", tuple(sorted(self.values, key=lambda v: v.index)))
        self._seal([v.to_wire() for v in self.values])

    def _seal(self, wire: Sequence[list[Any]]) -> None:
        """Set the canonical encoding of ``wire`` (``to_wire()``); enforce the size bound."""
        data = _pack(wire)
        if len(data) > MAX_RECORD_BYTES:
            raise _fail("record-size", f"record is {len(data)} bytes (at most {MAX_RECORD_BYTES})")
        _set_record_bytes(self, data)

    @classmethod
    def of(cls, values: Iterable[Value]) -> Record:
        return cls(tuple(values))

    def encode(self) -> bytes:
        """The canonical msgpack encoding."""
        return self._bytes

    def to_wire(self) -> list[Any]:
        """The canonical structure: ``[index, type, data, ttl, timestamp]`` per value."""
        return [v.to_wire() for v in self.values]

    @staticmethod
    def encode_wire(values: Sequence[list[Any]]) -> bytes:
        """The canonical bytes of a record given as wire values from :meth:`Value.check`.

        Makes the checks a Record makes (count, distinct indexes, size) but
        needs ``values`` sorted by index, and builds no objects: for bulk
        encoders that sign many records and keep none.
        """
        if len(values) > MAX_VALUES:
            raise _fail("too-many-values", f"{len(values)} values (at most {MAX_VALUES})")
        last = 0
        for v in values:
            if v[0] <= last:
                raise _fail("encoding", "values must be sorted by distinct indexes")
            last = v[0]
        data = _pack(values)
        if len(data) > MAX_RECORD_BYTES:
            raise _fail("record-size", f"record is {len(data)} bytes (at most {MAX_RECORD_BYTES})")
        return data

    @classmethod
    def from_wire(cls, obj: Any) -> Record:
        if type(obj) is not list:
            raise _fail("encoding", "a record is an array of values")
        values = []
        wire = []
        last = 0  # the values are usually sorted by distinct indexes already
        ordered = True
        for item in obj:
            if type(item) is not list or len(item) != 5:
                raise _fail("encoding", "a value is [index, type, data, ttl, timestamp]")
            index, vtype, data, ttl, ts = item
            # Value.make(index, vtype, data, ttl, ts), inlined: this runs for every
            # value a registrar or resolver decodes.
            w = _checked(index, vtype, data, ttl, ts)
            v = _new(Value)
            _set_index(v, index)
            _set_type(v, w[1])
            _set_data(v, w[2])
            _set_ttl(v, ttl)
            _set_timestamp(v, w[4])
            values.append(v)
            # The checked [index, type, data, ttl, timestamp] is the value's wire
            # form, a map's keys sorted.
            wire.append(w if type(w[2]) is str else v.to_wire())
            if index <= last:
                ordered = False
            last = index
        if cls is not Record or not ordered or len(values) > MAX_VALUES:
            return cls(tuple(values))  # the general path: refuses, sorts, or subclasses
        self = _new(Record)
        _set_record_values(self, tuple(values))
        self._seal(wire)
        return self

    @classmethod
    def decode(cls, data: bytes) -> Record:
        """Decode and insist on the canonical form."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise _fail("encoding", f"record is not valid msgpack: {e}") from e
        record = cls.from_wire(obj)
        if record.encode() != data:
            raise _fail("encoding", "record is not in canonical form")
        return record

    def urls(self) -> list[str]:
        return [v.data for v in self.values if v.type == "URL" and isinstance(v.data, str)]

    def first(self, vtype: str) -> Value | None:
        return next((v for v in self.values if v.type == vtype), None)

    def sites(self) -> Mapping[str, Any]:
        """The service URLs by role (:data:`SITE`, else a record's older HS_SITE)."""
        for vtype in (SITE, _LEGACY[SITE]):
            v = self.first(vtype)
            if v is not None and isinstance(v.data, Mapping):
                return v.data
        return {}

    def pubkeys(self) -> list[str]:
        """The cityid verifier keys (:data:`PUBKEY`, then a record's older HS_PUBKEY)."""
        return [
            v.data
            for vtype in (PUBKEY, _LEGACY[PUBKEY])
            for v in self.values
            if v.type == vtype and isinstance(v.data, str)
        ]

    def select(self, types: Sequence[str] = (), indexes: Sequence[int] = ()) -> Record:
        """Handle-style filter: a type ending in '.' matches its sub-types."""

        def keep(v: Value) -> bool:
            if indexes and v.index in indexes:
                return True
            for t in types:
                if v.type == t or (t.endswith(".") and v.type.startswith(t)):
                    return True
            return not types and not indexes

        return Record(tuple(v for v in self.values if keep(v)))

    def to_json(self, handle: str, response_code: int = 1) -> dict[str, Any]:
        """The Handle REST body: ``responseCode``, ``handle``, ``values``."""
        return {
            "responseCode": response_code,
            "handle": handle,
            "values": [v.to_json() for v in self.values],
        }

    def with_timestamp(self, ts: int) -> Record:
        return Record(tuple(replace(v, timestamp=ts) for v in self.values))


_set_record_values = Record.values.__set__  # type: ignore[attr-defined]
_set_record_bytes = Record._bytes.__set__  # type: ignore[attr-defined]


class PackedRecord(Record):
    """A record known by its canonical bytes; its values are decoded on first use.

    Followers that store records as they are logged (the resolver's sync writes a
    CSV's million records to Redis) need the bytes, not a million sets of objects.
    Code that does look at the values gets them decoded and checked
    (:meth:`Record.decode`), or a :class:`RecordError`.
    """

    __slots__ = ()

    @classmethod
    def of_bytes(cls, data: bytes) -> PackedRecord:
        self = _new(cls)
        _set_record_bytes(self, data)
        return self

    @property  # type: ignore[misc]
    def values(self) -> tuple[Value, ...]:  # type: ignore[override]
        return Record.decode(self._bytes).values

    def to_wire(self) -> list[Any]:
        return Record.decode(self._bytes).to_wire()


def check_wire(obj: Any) -> None:
    """Raise :class:`RecordError` unless ``obj`` is a record's canonical wire structure.

    What ``Record.from_wire(obj)`` checks, plus that ``obj`` is already canonical
    (sorted by distinct indexes, types spelt canonically, data normalised, maps with
    sorted keys), building no objects: for bulk followers that check every record
    of a log once and keep only its bytes. The size bound is the caller's (it has
    the bytes).
    """
    if type(obj) is not list:
        raise _fail("encoding", "a record is an array of values")
    if len(obj) > MAX_VALUES:
        raise _fail("too-many-values", f"{len(obj)} values (at most {MAX_VALUES})")
    last = 0
    for item in obj:
        if type(item) is not list or len(item) != 5:
            raise _fail("encoding", "a value is [index, type, data, ttl, timestamp]")
        w = _checked(*item)
        if w != item:
            raise _fail("encoding", "record is not in canonical form")
        if type(item[2]) is not str and list(item[2]) != sorted(item[2]):
            raise _fail("encoding", "record is not in canonical form")
        if w[0] <= last:
            raise _fail("encoding", "values must be sorted by distinct indexes")
        last = w[0]


def decode_trusted(data: bytes) -> Record:
    """A record from bytes this program checked when it stored them: no checks again.

    For readers of a store whose writer checked every record (the resolver reads
    what its sync verified): building the values costs a fifth of checking them.
    """
    obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    values = []
    for index, vtype, value, ttl, ts in obj:
        v = _new(Value)
        _set_index(v, index)
        _set_type(v, vtype)
        _set_data(v, value)
        _set_ttl(v, ttl)
        _set_timestamp(v, ts)
        values.append(v)
    self = _new(Record)
    _set_record_values(self, tuple(values))
    _set_record_bytes(self, data)
    return self


def values_from_json(items: Any, *, timestamp: int | None = None) -> Record:
    """Read a Handle REST ``values`` array, as clients send it.

    Accepts ``data`` as ``{format, value}`` or a bare string, and numbers given
    as strings (``"index": "200"``), as HANDLE.NET clients do.
    """
    if isinstance(items, Mapping) and "values" in items:
        items = items["values"]
    if not isinstance(items, list):
        raise _fail("json", "values must be a JSON array")
    if len(items) > MAX_VALUES:
        raise _fail("too-many-values", f"{len(items)} values (at most {MAX_VALUES})")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _fail("json", f"values[{n}] is not an object")
        data = item.get("data")
        if isinstance(data, Mapping) and "value" in data:
            data = data["value"]
        try:
            index = _as_int(item.get("index"), f"values[{n}].index")
            ttl = _as_int(item.get("ttl", DEFAULT_TTL), f"values[{n}].ttl")
        except RecordError:
            raise
        out.append(Value.make(index, item.get("type", ""), data, ttl, timestamp))
    return Record(tuple(out))


def _as_int(x: Any, where: str) -> int:
    if isinstance(x, bool):
        raise _fail("json", f"{where} must be an integer")
    if isinstance(x, int):
        return x
    if isinstance(x, str) and _DIGITS_RE.fullmatch(x):
        return int(x)
    raise _fail("json", f"{where} must be an integer")


def render_template(record: Record, **fields: str) -> Record:
    """Substitute ``{suffix}``, ``{id}``... in string data (range-mint templates).

    Only bare field names are allowed: str.format would also evaluate
    ``{suffix.__class__}`` or ``{suffix[0]}``, which a template must not reach.
    """
    out = []
    for v in record.values:
        if isinstance(v.data, str) and ("{" in v.data or "}" in v.data):
            data = _render(v.data, fields, v.index)
            out.append(Value.make(v.index, v.type, data, v.ttl, v.timestamp))
        else:
            out.append(v)
    return Record(tuple(out))


def _render(text: str, fields: Mapping[str, str], index: int) -> str:
    parts: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise _fail("template", f"value {index}: bad template {text!r}: {e}") from e
    for literal, name, spec, conversion in parsed:
        parts.append(literal)
        if name is None:
            continue
        if name not in fields or spec or conversion:
            raise _fail(
                "template",
                f"value {index}: template field {{{name}}} is not one of "
                f"{', '.join('{' + f + '}' for f in sorted(fields))} (no attributes or formats)",
            )
        parts.append(fields[name])
    return "".join(parts)
