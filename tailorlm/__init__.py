"""tailorlm: make an open-weight language model your own and run it wherever you want."""

__version__ = "0.1.0"
