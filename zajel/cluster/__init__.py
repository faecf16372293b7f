"""Cluster mode: several ``zajel serve`` nodes on one Redis behave as one server
(docs/cluster.md)."""


class ClusterStartError(Exception):
    """The cluster cannot be joined at start; the message is one line, without secrets."""
