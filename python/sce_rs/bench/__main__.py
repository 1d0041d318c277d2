"""``python -m sce_rs.bench``: see the package's docstring, or ``--help``."""

from sce_rs.bench.cli import main

main()
