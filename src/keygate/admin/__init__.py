"""The admin plane: an HTTP API for keys, teams, usage and audit on its own listener.

``tokens`` issues and checks admin tokens and their roles, ``service`` holds the operations
(shared with nothing on the hot path), ``api`` is the Starlette app, ``openapi`` its published
contract, ``listener`` the embedded granian server that serves it.
"""
