"""Signed, atomic, rollback-safe model updates (docs/updates.md).

- ``signing``: Ed25519 keys and signed envelopes (PyNaCl).
- ``metadata``: root of trust (key rotation) and release manifests, parsed strictly and verified.
- ``publish``: the release repository on the publishing machine (``elma keys``, ``elma publish``).
- ``client``: bounded, resumable downloads from ``elma-serve --releases``.
- ``store``: the device's models folder: staging, the atomic ``current`` switch, rollback, state.
- ``health``: the canned questions a release must answer as it says.
- ``updater``: ``elma update``, the steps in order.
"""
