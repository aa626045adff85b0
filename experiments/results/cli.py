"""Command line: ``python -m experiments.results {tables,figures,notebooks}``.

  python -m experiments.results tables                # rewrite the tables
  python -m experiments.results tables --check        # exit 1 where one differs
  python -m experiments.results tables --collect runs/results   # copy runs first
  python -m experiments.results figures --runs runs/results --out docs/results
  python -m experiments.results notebooks             # the README's figures

Run from the repository root: ``figures`` reads and writes the folders it
is given, relative to the working directory.
"""

import argparse
import pathlib
from typing import Optional, Sequence

from experiments.results import collect
from experiments.results import figures
from experiments.results import notebooks
from experiments.results import pages


def parser() -> argparse.ArgumentParser:
  """The command line's parser, one subcommand per job."""
  cli = argparse.ArgumentParser(
      prog='python -m experiments.results',
      description='The tables and figures of docs/RESULTS.md and the '
      "README's figures.")
  commands = cli.add_subparsers(dest='command', required=True)
  tables = commands.add_parser(
      'tables', help='render the tables of docs/RESULTS.md and README.md '
      'from docs/results/')
  tables.add_argument('--check', action='store_true',
                      help='change nothing; exit 1 if a page or a run file '
                      'differs from what the pages were rendered from')
  tables.add_argument('--collect', type=pathlib.Path, metavar='RUNS',
                      help='first copy the run files of every study in RUNS')
  tables.add_argument('--results', type=pathlib.Path, default=pages.RESULTS,
                      help='the run files (default: docs/results)')
  tables.add_argument('--pages', type=pathlib.Path, nargs='+',
                      default=list(pages.PAGES),
                      help='the pages (default: docs/RESULTS.md README.md)')
  drawn = commands.add_parser(
      'figures', help='draw the figures of docs/RESULTS.md and check the '
      'runs of scripts/results.sh')
  drawn.add_argument('--runs', type=pathlib.Path,
                     default=pathlib.Path('runs/results'))
  drawn.add_argument('--out', type=pathlib.Path,
                     default=pathlib.Path('docs/results'))
  drawn.add_argument('--sections', nargs='+', choices=figures.SECTIONS,
                     default=figures.SECTIONS, help='what to draw and check')
  readme = commands.add_parser(
      'notebooks', help="run notebooks 01-02 and copy the README's figures")
  readme.add_argument('--out', type=pathlib.Path,
                      default=notebooks.ROOT / 'docs' / 'images')
  readme.add_argument('--settings', default='cpu',
                      choices=('quick', 'cpu', 'accelerator'),
                      help="the notebooks' settings (default: cpu, the "
                      "README's)")
  return cli


def _tables(args: argparse.Namespace) -> int:
  """Collects, then renders or checks the pages' tables; the exit status."""
  if args.collect:
    print('collected:', ', '.join(collect.collect(args.collect, args.results)))
  differ = pages.update(args.pages, args.results, check=args.check)
  for line in differ:
    print(line)
  return 1 if differ and args.check else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs one subcommand.

  Bad input (a page without marked tables, a table without its runs)
  stops with one ``error:`` message and exit status 2, as argparse does;
  so do run files that no page can be rendered from (a file that no table
  declares, a summary that its seed files do not give), which
  ``tables --check`` lists among its differences instead.

  Returns:
    The exit status: 1 when ``tables --check`` finds a page or a run file
    that differs from what the pages were rendered from, else 0.
  """
  cli = parser()
  args = cli.parse_args(argv)
  if args.command == 'tables':
    try:
      return _tables(args)
    except (ValueError, FileNotFoundError) as error:
      cli.error(str(error))
  if args.command == 'figures':
    written = figures.draw(args.runs, args.out, args.sections)
  else:
    written = notebooks.draw_readme_figures(args.out, args.settings)
  for path in written:
    print(f'wrote {path} ({path.stat().st_size // 1024} KB)')
  return 0
