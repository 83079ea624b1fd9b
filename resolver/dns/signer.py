"""Signing answers for DO queries: :class:`Signer` (see :mod:`resolver.dns.dnssec`)."""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Sequence

import nacl.signing

from cityid.keys import SigningKey

from .answers import AAAA, NOERROR, NS, NXDOMAIN, RR, SOA, A, Answer
from .dnssec import CDNSKEY, CDS, DNSKEY, DS, NSEC, NXNAME, ZoneKey, nsec_rr, rrsig_rr

INCEPTION_SKEW = 3600  # seconds: validators with a slow clock still accept a fresh signature
VALIDITY = 7 * 86400
JITTER = 86400
SIGNED_CACHE_TTL = 86400.0  # a signed answer is computed (signed) again at least this often
_MEMO_MAX = 100_000
#: RRsets whose signatures are kept: they recur (every negative answer has its zone's SOA).
_MEMO_TYPES = frozenset((SOA, NS, DNSKEY, CDS, CDNSKEY, DS, A, AAAA))


class Signer:
    """Signs answers with the deployment's key; keeps the signatures of recurring RRsets."""

    def __init__(self, key: SigningKey, *, clock: float | None = None) -> None:
        self._key = nacl.signing.SigningKey(key.seed)
        self.zone_key = ZoneKey(key.public_key)
        self.clock = clock  # a fixed time (tests); None: the system clock
        self._rand = random.Random()
        self._memo: dict[tuple[bytes, int, int, bytes, tuple[bytes, ...]], tuple[int, RR]] = {}
        self.signatures = 0  # made, memo hits not counted

    def _now(self) -> int:
        return int(self.clock if self.clock is not None else time.time())

    def rrsig(self, rrs: Sequence[RR], signer: bytes) -> RR:
        owner, rtype, ttl, _ = rrs[0]
        now = self._now()
        memo_key = None
        if rtype in _MEMO_TYPES:
            memo_key = (owner, rtype, ttl, signer, tuple(rr[3] for rr in rrs))
            got = self._memo.get(memo_key)
            if got is not None and got[0] > now:
                return got[1]
        expiration = now + VALIDITY + int(JITTER * self._rand.random())
        sig = rrsig_rr(rrs, signer, self._key, self.zone_key.tag, now - INCEPTION_SKEW,
                       expiration)  # fmt: skip
        self.signatures += 1
        if memo_key is not None:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            # Made again once half its life is gone: never served close to expiry.
            self._memo[memo_key] = (now + (expiration - now) // 2, sig)
        return sig

    def _signed(self, rrs: Sequence[RR], signer: bytes) -> list[RR]:
        """``rrs`` with an RRSIG after each RRset (RRsets are contiguous in a section)."""
        out: list[RR] = []
        i = 0
        while i < len(rrs):
            j = i + 1
            while j < len(rrs) and rrs[j][:2] == rrs[i][:2]:
                j += 1
            out += rrs[i:j]
            out.append(self.rrsig(rrs[i:j], signer))
            i = j
        return out

    def sign(self, qname: bytes, answer: Answer, qtype: int = 0) -> Answer:
        """``answer`` (to ``qtype`` at ``qname``, lower case) as a DO query gets it."""
        if answer.rcode not in (NOERROR, NXDOMAIN) or not answer.signer:
            return answer  # errors, and the answers of another class
        signer = answer.signer
        if answer.negative:
            soa = answer.authority[0]
            ttl = min(soa[2], struct.unpack_from("!I", soa[3], len(soa[3]) - 4)[0])
            types = (NXNAME,) if answer.rcode == NXDOMAIN else answer.present
            nsec = nsec_rr(qname, types, ttl)
            proof = (nsec, self.rrsig((nsec,), signer))
            if qtype == NSEC:  # the NSEC that says so exists: it is the answer
                return answer._replace(rcode=NOERROR, answer=proof, authority=())
            authority = (*self._signed((soa,), signer), *proof)
            return answer._replace(rcode=NOERROR, authority=authority)
        if not answer.aa:  # a referral: DS or the proof there is none, from the parent
            cut = answer.authority[0][0]
            proof = list(answer.ds) or [nsec_rr(cut, (NS,), answer.authority[0][2])]
            authority = (*answer.authority, *self._signed(proof, signer))
            return answer._replace(authority=authority)
        return answer._replace(
            answer=tuple(self._signed(answer.answer, signer)),
            authority=tuple(self._signed(answer.authority, signer)),
        )


__all__ = ["SIGNED_CACHE_TTL", "Signer"]
