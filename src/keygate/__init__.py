"""keygate: a secure gateway for the OpenAI API.

Clients get their own revocable keys; the upstream API key never leaves the gateway.
"""

from . import native

native.activate()  # before anything imports a hot-path module (see keygate.native)

from .config import Settings, load_settings  # noqa: E402
from .errors import KeygateError  # noqa: E402
from .types import KeyRecord, Secret  # noqa: E402

__all__ = ["KeyRecord", "KeygateError", "Secret", "Settings", "__version__", "load_settings"]
__version__ = "0.1.0"
