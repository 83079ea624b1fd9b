"""The cityid ledger: each registrar's C2SP transparency log.

Pure formats and proofs live in :mod:`ledger.merkle` (RFC 9162 hashing and
proofs), :mod:`ledger.note` (c2sp.org/signed-note), :mod:`ledger.checkpoint`
(c2sp.org/tlog-checkpoint) and :mod:`ledger.tiles` (c2sp.org/tlog-tiles). The
crash-safe on-disk log is :mod:`ledger.storage`, its auditor
:mod:`ledger.audit`, and the async batcher :mod:`ledger.batcher`.
"""
