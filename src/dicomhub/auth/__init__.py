"""Subscribers, principals, credentials, access rules and audit (adapters + HTTP/DIMSE glue)."""
