"""`python -m waystation` runs the CLI."""

from waystation.cli import main

main()
