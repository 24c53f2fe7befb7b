"""The `fedadapt` command line: argument parsing, validation and printing, one module per subcommand.

Every module here only turns arguments into library calls and prints what they return; the work itself lives
in `common/` and `simulations/`, which never import this package (tests/test_layout.py checks it).
"""
