"""The ``xdrec`` command line: training, export, serving, asking for items, the demo.

It sits above the three services and the trainer and may import any of them; nothing in
``services/`` imports it, so a service starts without it (``python -m services.<name>``).
"""
