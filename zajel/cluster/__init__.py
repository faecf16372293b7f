"""Cluster mode: several ``zajel serve`` nodes on one Redis behave as one server
(docs/cluster.md)."""
