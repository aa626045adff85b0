"""laperm_jax: Lookahead Permutation (LaPerm) as an optax transformation.

Qiu & Suda, "Train-by-Reconnect: Decoupling Locations of Weights from Their
Values", NeurIPS 2020.
"""

from laperm_jax._laperm import LaPermState
from laperm_jax._laperm import laperm
from laperm_jax._laperm import synchronize
from laperm_jax._weight_vectors import as_vectors
from laperm_jax._weight_vectors import place_sorted
from laperm_jax._weight_vectors import ranks
from laperm_jax._weight_vectors import sort_vectors

__version__ = '0.1.0'

__all__ = (
    'LaPermState',
    'as_vectors',
    'laperm',
    'place_sorted',
    'ranks',
    'sort_vectors',
    'synchronize',
)
