"""`python -m clipsearch`: the same as the `clipsearch` command."""

from clipsearch.cli import main

main(prog_name="clipsearch")
