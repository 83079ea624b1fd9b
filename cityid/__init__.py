"""cityid: open, verifiable, hierarchical identifiers for smart cities.

This package is the core shared by the three services (``registrar``,
``ledger``, ``resolver``): identifiers, records, keys, signed operations and
the authority rules that bind them to the delegation chain.
"""

__version__ = "0.1.0"
