"""bpoc-proxy: an attribution-injecting reverse proxy for the BPOC recruiting API."""

__version__ = "0.1.0"
