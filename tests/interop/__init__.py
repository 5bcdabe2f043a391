"""Independent implementations the interoperability tests run against (see peers.py)."""
