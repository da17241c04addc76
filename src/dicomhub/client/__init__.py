"""The subscriber client: Python SDK (:class:`DicomhubClient`) and ``dicomhub push|pull``."""

from dicomhub.client.sdk import DicomhubClient, PullResult, PushResult, TransferError

__all__ = ["DicomhubClient", "PullResult", "PushResult", "TransferError"]
