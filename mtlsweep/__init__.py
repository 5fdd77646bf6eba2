"""mtlsweep: single-task, hard- and soft-sharing multi-task CNNs on DNA sequence, compared systematically.

The one import root. Its rooms are the top-level folders of the repository, installed as
``mtlsweep.<room>`` (see pyproject.toml); nothing is imported here, so importing a room costs
only that room.
"""
__version__ = "0.2.0"
