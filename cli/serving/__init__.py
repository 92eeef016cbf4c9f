"""``xdrec serve`` (one service, or all three as child processes) and ``xdrec recommend``."""
