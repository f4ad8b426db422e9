"""Reference computations shared by tests, ``check`` and ``bench``."""
