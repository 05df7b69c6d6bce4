"""The operations layer: what an operator can do, for the CLI and the admin API alike.

Each module is one area (``keys``, ``teams``, ``tokens``, ``upstreams``, ``master_key``, ``usage``).
An operation takes the store, the settings it needs, the acting :class:`~keygate.ops.audit.Actor`
and its input as plain JSON-shaped data; it validates everything before it writes anything
(``validate``, ``policy``), writes the change and its audit entry in one transaction, and returns a
view (``views``) that never holds a hash or a secret other than one it has just issued.

The CLI (``keygate.cli``) and the admin API (``keygate.admin``) are two front ends over these
functions; neither imports the other.
"""
