"""Entry point of ``python -m experiments``."""

from experiments import cli

if __name__ == '__main__':
  cli.main()
