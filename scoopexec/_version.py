"""The version of scoopexec (read by pyproject.toml, the trace file and the SCOOP alias)."""

__version__ = "0.1.0"
