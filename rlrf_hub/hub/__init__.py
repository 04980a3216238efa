"""An offline Hugging Face Hub: a repository store on disk and the HTTP server the HF clients talk to."""

from .server import HubServer, serve
from .store import ConflictError, StaleParentError, Store

__all__ = ["ConflictError", "HubServer", "StaleParentError", "Store", "serve"]
