"""`python -m userhub_sync.cli`: the same command line as the `userhub-sync` script (the chaos workers use it)."""

from userhub_sync.cli import main

main()
