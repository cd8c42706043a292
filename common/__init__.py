"""Wire types and codec shared by the server and the client."""

__version__ = "0.1.0"
