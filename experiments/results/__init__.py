"""The results pipeline: the tables and figures of docs/RESULTS.md.

Not training: programs that read what training wrote. ``collect`` copies the
run files of ``scripts/results.sh`` into ``docs/results/``; ``tables``
renders each results table from those files and ``pages`` puts them into
``docs/RESULTS.md`` and ``README.md``; ``restore`` rebuilds a finished run
(initial weights from its config, last checkpoint), ``checks`` tests its
kernels to be exact permutations of its initial weights and ``figures``
draws the page's figures; ``notebooks`` runs notebooks 01-02 for the
README's figures. ``python -m experiments.results --help`` (``cli``) runs
them.
"""
