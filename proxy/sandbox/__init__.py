"""A stand-in for BPOC and for an agency portal, used by ``bpoc-proxy demo`` and by the test suite."""
