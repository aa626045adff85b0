"""laperm_jax: Lookahead Permutation (LaPerm) as an optax transformation.

Qiu & Suda, "Train-by-Reconnect: Decoupling Locations of Weights from Their
Values", NeurIPS 2020.
"""

from laperm_jax._analysis import CycleSummary
from laperm_jax._analysis import RankingDistance
from laperm_jax._analysis import cycle_summary
from laperm_jax._analysis import permutation_between
from laperm_jax._analysis import permutation_cycles
from laperm_jax._analysis import ranking_distance
from laperm_jax._analysis import ranking_distance_per_entry
from laperm_jax._analysis import ranking_distances
from laperm_jax._analysis import weight_profiles
from laperm_jax._analysis import weight_statistics
from laperm_jax._derive import derive_nnx_vector_axes
from laperm_jax._derive import derive_vector_axes
from laperm_jax._export import export_permutations
from laperm_jax._export import restore_permutations
from laperm_jax._initializers import PruneResult
from laperm_jax._initializers import random_prune
from laperm_jax._initializers import shared_value
from laperm_jax._initializers import size_aware_rates
from laperm_jax._laperm import laperm
from laperm_jax._laperm import synchronize
from laperm_jax._state import FromInitialParams
from laperm_jax._state import LaPermState
from laperm_jax._state import laperm_states
from laperm_jax._weight_vectors import NO_FAN_IN
from laperm_jax._weight_vectors import as_vectors
from laperm_jax._weight_vectors import place_sorted
from laperm_jax._weight_vectors import ranks
from laperm_jax._weight_vectors import sort_vectors

__version__ = '0.1.0'

__all__ = (
    'CycleSummary',
    'FromInitialParams',
    'LaPermState',
    'NO_FAN_IN',
    'PruneResult',
    'RankingDistance',
    'as_vectors',
    'cycle_summary',
    'derive_nnx_vector_axes',
    'derive_vector_axes',
    'export_permutations',
    'laperm',
    'laperm_states',
    'permutation_between',
    'permutation_cycles',
    'place_sorted',
    'random_prune',
    'ranking_distance',
    'ranking_distance_per_entry',
    'ranking_distances',
    'ranks',
    'restore_permutations',
    'shared_value',
    'size_aware_rates',
    'sort_vectors',
    'synchronize',
    'weight_profiles',
    'weight_statistics',
)
