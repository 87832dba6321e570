"""`python -m tailorlm` is the `tailor` command."""

from tailorlm.cli import main

main()
