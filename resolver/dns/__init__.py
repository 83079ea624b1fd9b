"""The resolver's DNS front end (RFC 1035 over UDP and TCP, EDNS(0), RRL).

* :mod:`resolver.dns.answers`: pure functions from the store's entries to DNS
  answers (TXT, URI, NAPTR, SOA, NS, referrals, negative answers) and their
  wire encoding, done once per (name, type).
* :mod:`resolver.dns.cache`: the bounded cache of encoded answers, invalidated
  by sync's messages.
* :mod:`resolver.dns.rrl`: response-rate limiting per client network.
* :mod:`resolver.dns.server`: the asyncio shells: UDP and TCP listeners, worker
  processes sharing the port (SO_REUSEPORT).
* :mod:`resolver.dns.cli`: ``cityid resolver dns serve``.
"""
