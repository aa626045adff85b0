"""Entry point of ``python -m experiments.results``."""

import sys

from experiments.results import cli

if __name__ == '__main__':
  sys.exit(cli.main())
