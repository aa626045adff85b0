"""Draws the README's figures by running the notebooks that explain them.

The figures come from the same code as the notebooks in ``notebooks/``:
:func:`draw_readme_figures` executes their sources (the jupytext ``.py``
files) top to bottom in a Jupyter kernel of the running Python (with their
CPU settings, ``LAPERM_NOTEBOOK_SETTINGS=cpu``: a 64-100-100-10 MLP on
scikit-learn's 8x8 digits, 30 epochs, batch 50, Adam at 1e-3 and
``lp.laperm(optax.adam(1e-3), 20)``), lets them write their figures into a
temporary folder (``LAPERM_FIGURES_DIR``) and copies the README's into
``docs/images/``:

- ``weight_profiles.png`` (``01_quick_start.py``): the weight profiles of
  the Adam-trained kernels above those of their initialization (Figures
  11-12 of the paper);
- ``training_monitor.png`` (``02_reconnection.py``): per epoch, the first
  layer's percentiles, the ranking distance between consecutive epochs and
  the held-out loss, one column per run: LaPerm, LaPerm on a 50%-pruned
  initialization, Adam (Figure 13);
- ``permutation_cycles.png`` (``02_reconnection.py``): the permutation of
  one weight vector of the second layer (the one with the median number of
  cycles) between the first two LaPerm syncs, as cycles (Figure 14).

Needs what the tests use (``pip install '.[test]'``: jupytext, nbclient,
ipykernel, flax, scikit-learn, matplotlib). The tests
(``tests/test_notebooks.py``) and the site (``docs/conf.py``) execute the
notebooks with :func:`execute_notebook` too.
"""

import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Mapping, Optional

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / 'notebooks'
# The README's figures, by the notebook that draws them.
README_FIGURES = {
    '01_quick_start.py': ('weight_profiles.png',),
    '02_reconnection.py': ('training_monitor.png', 'permutation_cycles.png'),
}
KERNEL_NAME = 'python3'


def execute_notebook(path: pathlib.Path, *, cwd: pathlib.Path | str,
                     env: Optional[Mapping[str, str]] = None,
                     timeout: int = 600) -> Any:
  """Executes a notebook top to bottom in a kernel of this Python.

  The kernel runs ``sys.executable -m ipykernel_launcher`` (a kernel spec
  written into a temporary folder, so no installed kernel spec named
  ``python3`` can substitute another interpreter), in ``cwd``, with the
  environment ``os.environ`` updated by ``env``; the repository root and
  ``notebooks/`` are put first on its ``PYTHONPATH``, so it imports this
  checkout's ``laperm_jax`` and the notebooks' helper module.

  Args:
    path: The notebook, as a jupytext source (``.py``) or an ``.ipynb``
      file; it is not modified.
    cwd: The kernel's working directory.
    env: Environment variables for the kernel, on top of ``os.environ``.
    timeout: Seconds allowed per cell.

  Returns:
    The executed notebook (an ``nbformat.NotebookNode``) with its outputs.

  Raises:
    nbclient.exceptions.CellExecutionError: A cell raised (e.g. an assert).
  """
  # Imported here: only this function needs Jupyter.
  import jupyter_client.kernelspec  # pylint: disable=g-import-not-at-top
  import jupyter_client.manager  # pylint: disable=g-import-not-at-top
  import jupytext  # pylint: disable=g-import-not-at-top
  import nbclient  # pylint: disable=g-import-not-at-top

  notebook = jupytext.read(path, as_version=4)
  kernel_env = dict(os.environ)
  kernel_env.update(env or {})
  kernel_env['PYTHONPATH'] = os.pathsep.join(
      [str(ROOT), str(NOTEBOOKS)]
      + [p for p in [kernel_env.get('PYTHONPATH')] if p])
  with tempfile.TemporaryDirectory() as specs:
    spec_dir = pathlib.Path(specs) / KERNEL_NAME
    spec_dir.mkdir()
    (spec_dir / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
                 '{connection_file}'],
        'display_name': f'Python ({sys.executable})',
        'language': 'python',
    }))
    manager = jupyter_client.manager.KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=jupyter_client.kernelspec.KernelSpecManager(
            kernel_dirs=[specs]))
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=timeout,
        resources={'metadata': {'path': str(cwd)}})
    client.execute(env=kernel_env)
  return notebook


def printed_results(notebook: Any) -> dict[str, Any]:
  """The dict a notebook printed as ``RESULTS {json}``, from its outputs."""
  for cell in notebook.cells:
    for output in cell.get('outputs', ()):
      if output.get('output_type') == 'stream':
        for line in output.get('text', '').splitlines():
          if line.startswith('RESULTS '):
            return json.loads(line[len('RESULTS '):])
  raise ValueError('The notebook printed no RESULTS line.')


def draw_readme_figures(out: pathlib.Path, settings: str = 'cpu'
                        ) -> list[pathlib.Path]:
  """Runs notebooks 01-02 and copies the README's figures into ``out``.

  Prints each notebook's ``RESULTS`` line (accuracies and checks).

  Args:
    out: Where the figures go (created if missing): ``docs/images`` for
      the README.
    settings: The notebooks' ``LAPERM_NOTEBOOK_SETTINGS``: ``quick``,
      ``cpu`` (the README's) or ``accelerator``.

  Returns:
    The figures written.
  """
  out.mkdir(parents=True, exist_ok=True)
  written = []
  with tempfile.TemporaryDirectory() as work:
    figures = pathlib.Path(work) / 'figures'
    for name, outputs in README_FIGURES.items():
      notebook = execute_notebook(
          NOTEBOOKS / name, cwd=work,
          env={'LAPERM_NOTEBOOK_SETTINGS': settings,
               'LAPERM_FIGURES_DIR': str(figures)})
      print(name, json.dumps(printed_results(notebook)))
      written += [pathlib.Path(shutil.copyfile(figures / figure, out / figure))
                  for figure in outputs]
  return written
