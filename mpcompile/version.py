"""The mpcompile version, stamped into every model it writes (``mpcompile.version``)."""

__version__ = "0.1.0"
