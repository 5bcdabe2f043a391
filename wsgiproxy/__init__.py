"""WSGIProxy: turn WSGI calls back into HTTP requests, and rebuild them on the other side."""

__version__ = "1.0.0.dev0"
