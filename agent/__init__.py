"""paystation-agent"""

# The one place the version is written (pyproject.toml reads it from here): reading it
# back from the installed metadata cost every start importlib.metadata, ~40 ms.
__version__ = "0.1.0"
