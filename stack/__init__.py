"""The whole system on one machine: the composition root, above the services.

``cityid`` is the core every service imports; ``ledger``, ``registrar`` and
``resolver`` are the services; this package is the only one that imports them
all, to run them together (``cityid up``).
"""
