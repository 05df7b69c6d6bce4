"""keygate: a secure gateway for the OpenAI API.

Clients get their own revocable keys; the upstream API key never leaves the gateway.
"""

from .config import Settings, load_settings
from .errors import KeygateError
from .types import KeyRecord, Secret

__all__ = ["KeyRecord", "KeygateError", "Secret", "Settings", "__version__", "load_settings"]
__version__ = "0.1.0"
