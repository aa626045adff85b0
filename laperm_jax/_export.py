"""Permutation-only export: a LaPerm-trained network as ranks over its init.

A network trained by LaPerm is, exactly, its initial weights plus one
permutation per weight vector: after a sync, every weight vector holds its
sorted initial values placed in a learned rank order. :func:`export_permutations`
writes that rank order (``ceil(log2 n)`` bits per weight for vectors of length
``n``) and either the sorted initial values or a PRNG key that regenerates
them; :func:`restore_permutations` rebuilds the synchronized params bit for
bit, and refuses a file that would give other weights.

File format (version 3): one uncompressed ``.npz`` file (a zip of ``.npy``
arrays, each with a CRC-32, read with ``allow_pickle=False``). Member
``manifest`` is UTF-8 JSON as a ``uint8`` array::

  {"format": "laperm_jax.permutations", "version": 3,
   "init_key": null or {"impl": "threefry2x32" (a typed key) or null (raw)},
   "leaves": [{"path": the leaf's jax.tree_util.keystr path, "shape": [...],
               "dtype": "float32", "encoding": ..., ...}, ...]}

A boxed leaf (Flax's ``nn.Partitioned``, an NNX variable) is written under
the path of its box, without the ``.value`` that holds the array, so the
same leaf boxed or not has one path. Leaves are listed in flattened order;
leaf ``i``'s arrays are members named
``{i}.<name>``, all in C order and little-endian. Every ``ranks`` and
``binary`` leaf records its layout, ``"vector_axes"``: the sorted fan-in
axes that form one weight vector (:func:`laperm_jax.as_vectors`; vector
``j`` is column ``j`` of that matrix). Version 1 files (written before
layouts) have none and mean the default, all axes but the last; they are
read as before. The encodings:

- ``raw`` (leaves LaPerm does not permute): ``{i}.raw``, the leaf's bytes as
  ``uint8``.
- ``ranks``: ``{i}.ranks``, the stable rank of every entry within its weight
  vector: with ``"rank_bits": b``, bit-packed (rank ``k`` of the flat leaf in
  bits ``[k * b, (k + 1) * b)``, least significant first, ``np.packbits``
  with ``bitorder='little'``); with ``"rank_bits": null``, in the leaf's shape
  as the smallest of ``uint8``, ``uint16``, ``uint32`` that holds them.
  ``"sorted": "stored"`` adds ``{i}.sorted``, the sorted initial values' bits
  (unsigned integers of the dtype's width, in the leaf's shape);
  ``"sorted": "init"`` regenerates them from the member ``init_key``.
- ``binary`` (weight-agnostic leaves, every entry 0 or one value ``v``):
  ``{i}.mask``, one bit per entry (packed as above) set where the entry is
  ``v``; ``"value"``: the bytes of ``v`` in hex. ``"counts": "stored"`` adds
  ``{i}.counts``, each weight vector's number of initial entries equal to
  ``v``, one per vector as the smallest of ``uint8``, ``uint16``, ``uint32``
  that holds the vector length; ``"counts": "init"`` regenerates the initial
  values from the member ``init_key``. Version 1 and 2 files have no counts:
  their binary leaves are refused, since nothing shows that they restore a
  permutation of the initial weights.

Every leaf carries ``"sha256"``, the SHA-256 of its synchronized values'
bytes, and every ``ranks`` leaf (and ``binary`` leaf with ``"counts":
"init"``) ``"sorted_sha256"``, that of its sorted initial values; a restore
recomputes both from what the file holds (or what ``init_fn`` regenerates)
and compares. Hashes catch accidents, not edits: whoever edits a file can
recompute them. So a restore also checks, whatever the hashes say, the
promise of the format: stored sorted values are ascending in every weight
vector, and every restored weight vector is bitwise a permutation of its
initial values (its bit patterns, sorted, equal theirs; for a ``binary``
leaf with stored counts, it has its count of entries ``v``). A file edited
as a whole, sorted values or counts included, describes another initial
network, which only ``"sorted": "init"`` (or ``"counts": "init"``) ties to
``init_fn``.
"""

from collections.abc import Callable
import functools
import hashlib
import json
import math
import os
import tempfile
from typing import Any, Optional, Union
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laperm_jax import _laperm
from laperm_jax import _state
from laperm_jax import _weight_vectors
from laperm_jax._weight_vectors import as_vectors
from laperm_jax._weight_vectors import from_vectors

FORMAT = 'laperm_jax.permutations'
VERSION = 3
# Versions this module reads: 1 has no "vector_axes" (the default layout);
# 1 and 2 have no per-vector counts of a binary leaf's nonzero weights.
_READS = (1, 2, 3)

InitFn = Callable[[jax.Array], optax.Params]
PathLike = Union[str, os.PathLike]

def export_permutations(
    params: optax.Params,
    opt_state: optax.OptState,
    path: PathLike,
    *,
    init_fn: Optional[InitFn] = None,
    init_key: Optional[jax.Array] = None,
    pack_ranks: bool = True,
    binary: bool = True,
    vector_axes: _weight_vectors.VectorAxes = None,
    initial_params: Optional[_state.InitialParams] = None,
) -> None:
  """Writes ``synchronize(params, opt_state)`` as permutations of the init.

  Every leaf LaPerm permutes is written as the stable rank of each of its
  entries within its weight vector, plus the source of its sorted initial
  values: the values themselves, or, with ``init_fn`` and ``init_key``, only
  the key (``init_fn(init_key)`` regenerates them on restore). Leaves whose
  initial values are all 0 or one value ``v`` (weight-agnostic nets,
  :func:`laperm_jax.shared_value`) take one bit per weight with ``binary``,
  plus each vector's count of entries ``v`` (or, with ``init_fn`` and
  ``init_key``, nothing more). Other leaves (biases, ``reset_mask`` leaves)
  are written as a sync sets them. :func:`restore_permutations` gives back
  the synchronized params bit for bit. The file is written to a temporary
  name and then renamed, so an interrupted export leaves no partial file at
  ``path``.

  Args:
    params: The current params (synced or not: the ranks are those a sync
      would use, so the export equals ``synchronize(params, opt_state)``).
    opt_state: An optimizer state holding exactly one
      :class:`laperm_jax.LaPermState`, anywhere inside it.
    path: The file to write (conventionally ``.npz``).
    init_fn: A function ``key -> params`` that regenerates the initial params
      of the training run (e.g. ``lambda key: model.init(key, x)['params']``,
      composed with :func:`laperm_jax.random_prune` if the run pruned).
      Called here once to check that it does regenerate every permuted leaf's
      initial values, bit for bit.
    init_key: The PRNG key to call ``init_fn`` with (typed or raw); stored in
      the file. Pass both or neither.
    pack_ranks: Whether to pack ranks into ``ceil(log2 n)`` bits each for
      vectors of length ``n``, rather than store them as ``uint8``,
      ``uint16`` or ``uint32``.
    binary: Whether to store leaves whose initial values are all 0 or one
      value as one bit per weight.
    vector_axes: Optional, and checked only: the state carries its layout
      (a different one raises, as in :func:`laperm_jax.synchronize`). The
      file records each leaf's layout, so a restore needs none.
    initial_params: Optional, and checked only: the state carries the
      function that regenerates its initial weights when it holds no copy
      of them (a different one raises). ``init_fn`` with ``init_key`` do
      not regenerate them for the export; they choose to write the key
      instead of the sorted values, and are checked against them.

  Raises:
    ValueError: ``opt_state`` holds no or several LaPerm states, ``params``
      do not match it, ``vector_axes`` or ``initial_params`` contradict the
      state (as :func:`laperm_jax.synchronize` checks), a permuted weight
      vector holds a non-finite value (it has no rank order),
      ``init_fn(init_key)`` does not regenerate a leaf's initial values, or
      a leaf is a global array that this process cannot read whole (gather
      it first); the message names the leaf.

  Example:
    >>> import os, tempfile
    >>> import jax, jax.numpy as jnp, optax
    >>> import laperm_jax as lp
    >>> init_fn = lambda key: {'w': jax.random.normal(key, (300, 4)),
    ...                        'b': jnp.zeros(4)}
    >>> params = init_fn(jax.random.key(0))
    >>> tx = lp.laperm(optax.adam(1e-1), sync_period=2)
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum(jnp.sin(p['w']) * jnp.arange(4.0)) + p['b'].sum()
    >>> for _ in range(3):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> path = os.path.join(tempfile.mkdtemp(), 'net.npz')
    >>> lp.export_permutations(params, state, path, init_fn=init_fn,
    ...                        init_key=jax.random.key(0))
    >>> os.path.getsize(path) < params['w'].nbytes  # 9 bits per weight
    True
    >>> restored = lp.restore_permutations(path, params, init_fn=init_fn)
    >>> exact = lp.synchronize(params, state)
    >>> bool(jnp.array_equal(restored['w'], exact['w']))
    True

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  where = 'export_permutations'
  state = _state.states_in(where, opt_state, exactly_one=True)[0]
  if (init_fn is None) != (init_key is None):
    raise ValueError(f'{where}: pass init_fn and init_key together, or '
                     'neither (then the sorted initial values are stored).')
  _check_addressable(where, params, 'params')
  _check_addressable(where, state, 'opt_state')
  held, _ = _state.held_leaves(where, params, state.sorted_init,
                               state.reset_values)
  layouts = _state.layouts(where, state, params, held, vector_axes)
  function = _state.initial_params(where, state, params, initial_params)
  if function is None and init_fn is not None:
    function = functools.partial(init_fn, init_key)
  held = _state.regenerate(where, held, layouts, params, function)
  regenerated = None if init_fn is None else _init_leaves(init_fn, init_key)
  arrays, entries = {}, []
  for index, (leaf, axes) in enumerate(zip(held, layouts)):
    if _state.is_masked(leaf.sorted_values):
      value = np.asarray(_laperm.sync_leaf(leaf, axes))
      entry = {'encoding': 'raw', 'sha256': _sha256(value)}
      arrays[f'{index}.raw'] = np.ascontiguousarray(value).reshape(-1).view(
          np.uint8)
    else:
      value = np.asarray(leaf.sorted_values)
      entry = _encode_permuted(index, leaf.name, leaf.param, value, axes,
                               regenerated, pack_ranks, binary, arrays)
    entries.append({'path': leaf.name, 'shape': list(value.shape),
                    'dtype': value.dtype.name, **entry})
  manifest = {'format': FORMAT, 'version': VERSION, 'init_key': None,
              'leaves': entries}
  if any(_regenerates(entry) for entry in entries):
    typed = jnp.issubdtype(init_key.dtype, jax.dtypes.prng_key)
    manifest['init_key'] = {
        'impl': str(jax.random.key_impl(init_key)) if typed else None}
    arrays['init_key'] = np.asarray(
        jax.random.key_data(init_key) if typed else init_key)
  arrays['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  _write_atomically(path, arrays)


def restore_permutations(
    path: PathLike,
    target: optax.Params,
    *,
    init_fn: Optional[InitFn] = None,
) -> optax.Params:
  """Reads a file of :func:`export_permutations` back into synced params.

  The result is bitwise ``synchronize(params, opt_state)`` of the export.
  Nothing is returned unless every check passes: the leaves' paths, shapes
  and dtypes match ``target``; every weight vector's ranks are a permutation
  of ``0 .. n-1``; every permuted leaf's sorted initial values (stored or
  regenerated by ``init_fn``) and every restored leaf have the SHA-256
  recorded at export. Whatever those hashes say (an edit can recompute
  them), stored sorted values must be ascending in every weight vector, and
  every restored weight vector must be bitwise a permutation of its initial
  values: a binary leaf keeps each vector's count of nonzero weights.

  Args:
    path: A file written by :func:`export_permutations`.
    target: A params tree with the structure, shapes and dtypes of the
      exported params; its leaves may be arrays or ``jax.ShapeDtypeStruct``
      (e.g. from ``jax.eval_shape``). Restored leaves take a leaf's
      ``sharding`` where it has one.
    init_fn: The function ``key -> params`` given at export, needed (and
      only used) when the file stores a key instead of sorted values or
      counts.

  Returns:
    A tree like ``target`` of ``jax.Array``.

  Raises:
    ValueError: The file is truncated, corrupt or of an unknown format or
      version, does not match ``target``, ``init_fn`` regenerates other
      values than at export, or a restored weight vector would not be a
      permutation of its initial values (or a binary leaf of a version 1 or
      2 file cannot show that it is); the message names the leaf, and the
      first weight vector at fault with the number of such vectors.

  Example:
    >>> import os, tempfile
    >>> import jax, jax.numpy as jnp, optax
    >>> import laperm_jax as lp
    >>> params = {'w': jnp.array([[1.0], [2.0], [3.0]])}
    >>> state = lp.laperm(optax.sgd(1.0), 10).init(params)
    >>> moved = {'w': jnp.array([[0.5], [-7.0], [9.0]])}
    >>> path = os.path.join(tempfile.mkdtemp(), 'net.npz')
    >>> lp.export_permutations(moved, state, path)
    >>> like = jax.eval_shape(lambda: params)
    >>> lp.restore_permutations(path, like)['w'].ravel()
    Array([2., 1., 3.], dtype=float32)

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  where = f'restore_permutations: {os.fspath(path)}'
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f'{where} is not a readable permutation export '
                     f'(truncated or corrupt?): {_describe(error)}') from error
  with archive:
    manifest = _read_manifest(archive, where)
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    _check_paths([_state.leaf_name(p) for p, _ in flat],
                 [entry.get('path') for entry in manifest['leaves']], where)
    regenerated = None
    if any(_regenerates(entry) for entry in manifest['leaves']):
      if init_fn is None:
        raise ValueError(f'{where} stores a PRNG key instead of the initial '
                         'values; pass the init_fn of the export.')
      regenerated = _init_leaves(init_fn, _read_key(archive, manifest, where))
    leaves = []
    for index, ((key_path, like), entry) in enumerate(
        zip(flat, manifest['leaves'])):
      try:
        value = _decode(archive, index, entry, like, regenerated,
                        manifest['version'])
        _check_sha256(value, entry['sha256'], 'the restored values')
      except (ValueError, KeyError, TypeError, OSError, EOFError,
              zipfile.BadZipFile) as error:
        raise ValueError(f'{where}: leaf {_state.leaf_name(key_path)}: '
                         f'{_describe(error)}') from error
      leaves.append(jax.device_put(value, getattr(like, 'sharding', None)))
  return treedef.unflatten(leaves)


# ---------------------------------------------------------------------------
# Export.


def _check_addressable(where, tree, what) -> None:
  """Raises if a leaf of ``tree`` is a global array this process cannot read."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
        and not leaf.is_fully_replicated):
      raise ValueError(
          f'{where}: leaf {what}{jax.tree_util.keystr(path)} is a global '
          'array sharded over processes, which this process cannot read '
          'whole: gather params and opt_state first with '
          'jax.experimental.multihost_utils.process_allgather(tree, '
          'tiled=True) on every process, and export from one.')


def _regenerates(entry) -> bool:
  """Whether a manifest entry's initial values come from ``init_fn(key)``."""
  return entry.get('sorted') == 'init' or entry.get('counts') == 'init'


def _init_leaves(init_fn, key) -> dict[str, Any]:
  """``init_fn(key)``'s leaves by name (:func:`_state.leaf_name`)."""
  flat = jax.tree_util.tree_flatten_with_path(init_fn(key))[0]
  return {_state.leaf_name(path): leaf for path, leaf in flat}


def _encode_permuted(index, name, param, sorted_init, axes, regenerated,
                     pack_ranks, binary, arrays) -> dict[str, Any]:
  """Adds a permuted leaf's arrays to ``arrays``; returns its manifest entry."""
  if not bool(jnp.all(jnp.isfinite(param))):
    raise ValueError(
        f'export_permutations: leaf {name} holds a non-finite value, so its '
        'weight vector has no rank order (a sync makes it NaN).')
  ranks = np.asarray(_weight_vectors.ranks(param, vector_axes=axes)).astype(
      np.uint32)
  synced = _place(sorted_init, ranks, axes)
  entry = {'sha256': _sha256(synced), 'vector_axes': list(axes)}
  value = _shared_value(sorted_init) if binary else None
  if value is not None:
    arrays[f'{index}.mask'] = np.packbits(
        _bits(synced).reshape(-1) != 0, bitorder='little')
    entry.update(encoding='binary', value=value.tobytes().hex())
    if regenerated is not None:
      entry['sorted_sha256'] = _sha256(sorted_init)
      _check_init_fn(regenerated, name, sorted_init, axes,
                     entry['sorted_sha256'])
      return {**entry, 'counts': 'init'}
    nonzero = as_vectors(_bits(sorted_init), vector_axes=axes) != 0
    arrays[f'{index}.counts'] = np.count_nonzero(nonzero, axis=0).astype(
        _rank_dtype(nonzero.shape[0] + 1))
    return {**entry, 'counts': 'stored'}
  entry['sorted_sha256'] = _sha256(sorted_init)
  vector_length = as_vectors(ranks, vector_axes=axes).shape[0]
  if pack_ranks:
    bits = _rank_bits(vector_length)
    arrays[f'{index}.ranks'] = _pack(ranks.reshape(-1), bits)
  else:
    bits = None
    arrays[f'{index}.ranks'] = ranks.astype(_rank_dtype(vector_length))
  entry.update(encoding='ranks', rank_bits=bits)
  if regenerated is None:
    arrays[f'{index}.sorted'] = _bits(sorted_init)
    return {**entry, 'sorted': 'stored'}
  _check_init_fn(regenerated, name, sorted_init, axes, entry['sorted_sha256'])
  return {**entry, 'sorted': 'init'}


def _check_init_fn(regenerated, name, sorted_init, axes, sha256) -> None:
  """Raises unless ``init_fn(init_key)`` regenerates ``sorted_init``."""
  try:
    _check_regenerated(regenerated, name, sorted_init.shape,
                       sorted_init.dtype, axes, sha256, 'init_fn(init_key)')
  except ValueError as error:
    raise ValueError(f'export_permutations: {error}') from error


def _place(sorted_init, ranks, axes) -> np.ndarray:
  """Each weight vector's sorted values placed at their ranks, in leaf shape."""
  placed = np.take_along_axis(as_vectors(sorted_init, vector_axes=axes),
                              as_vectors(ranks, vector_axes=axes), axis=0)
  return from_vectors(placed, sorted_init.shape, vector_axes=axes)


def _shared_value(sorted_init) -> Optional[np.ndarray]:
  """The one nonzero value of a leaf of 0s and that value, else None."""
  bits = _bits(sorted_init).reshape(-1)
  nonzero = bits[bits != 0]
  if nonzero.size == 0 or np.any(nonzero != nonzero[0]):
    return None
  return sorted_init.reshape(-1)[np.flatnonzero(bits)[:1]]


def _write_atomically(path, arrays) -> None:
  path = os.fspath(path)
  handle, temporary = tempfile.mkstemp(
      dir=os.path.dirname(os.path.abspath(path)), suffix='.tmp')
  try:
    with os.fdopen(handle, 'wb') as file:
      np.savez(file, **arrays)
    os.replace(temporary, path)
  except BaseException:
    os.unlink(temporary)
    raise


# ---------------------------------------------------------------------------
# Restore.


def _read_manifest(archive, where) -> dict[str, Any]:
  try:
    manifest = json.loads(archive['manifest'].tobytes().decode())
  except (KeyError, ValueError, OSError, EOFError,
          zipfile.BadZipFile) as error:
    raise ValueError(f'{where} has no readable manifest (not a permutation '
                     f'export, or corrupt): {_describe(error)}') from error
  found = manifest.get('format') if isinstance(manifest, dict) else None
  if found != FORMAT:
    raise ValueError(f'{where} is not a permutation export (format {found!r}, '
                     f'expected {FORMAT!r}).')
  if manifest.get('version') not in _READS:
    raise ValueError(f'{where} has format version {manifest.get("version")!r}; '
                     f'this laperm_jax reads versions {_READS}.')
  if not isinstance(manifest.get('leaves'), list) or not all(
      isinstance(entry, dict) for entry in manifest['leaves']):
    raise ValueError(f'{where}: the manifest lists no leaves.')
  return manifest


def _check_paths(names, file_names, where) -> None:
  if names == file_names:
    return
  missing = [name for name in names if name not in file_names]
  extra = [name for name in file_names if name not in names]
  raise ValueError(
      f'{where} does not match target: leaves of target not in the file: '
      f'{missing}; leaves of the file not in target: {extra}' +
      ('' if missing or extra else '; the same leaves in another order') + '.')


def _read_key(archive, manifest, where) -> jax.Array:
  try:
    data = archive['init_key']
    impl = manifest['init_key']['impl']
    return (jnp.asarray(data) if impl is None
            else jax.random.wrap_key_data(data, impl=impl))
  except (KeyError, TypeError, ValueError, OSError, EOFError,
          zipfile.BadZipFile) as error:
    raise ValueError(f'{where}: the stored PRNG key is missing or corrupt: '
                     f'{_describe(error)}') from error


def _decode(archive, index, entry, like, regenerated, version) -> np.ndarray:
  """Leaf ``index`` of the file as a NumPy array; raises if it cannot be exact."""
  shape, dtype = tuple(entry['shape']), jnp.dtype(entry['dtype'])
  if shape != tuple(like.shape) or dtype != like.dtype:
    raise ValueError(f'the file holds {dtype.name}{list(shape)}, target '
                     f'{jnp.dtype(like.dtype).name}{list(like.shape)}.')
  if jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise ValueError(f'JAX holds {dtype.name} only with jax_enable_x64 set.')
  encoding = entry['encoding']
  if encoding in ('binary', 'ranks') and not shape:
    raise ValueError(f'a {encoding} leaf must have rank >= 1.')
  if encoding == 'raw':
    data = _member(archive, f'{index}.raw', np.uint8,
                   math.prod(shape) * dtype.itemsize)
    return data.view(dtype).reshape(shape)
  if encoding == 'binary':
    return _decode_binary(archive, index, entry, shape, dtype, regenerated,
                          version)
  if encoding == 'ranks':
    return _decode_ranks(archive, index, entry, shape, dtype, regenerated,
                         version)
  raise ValueError(f'unknown encoding {encoding!r}.')


def _decode_binary(archive, index, entry, shape, dtype, regenerated,
                   version) -> np.ndarray:
  """A ``binary`` leaf, checked to keep each vector's count of nonzeros."""
  if version < 3:
    raise ValueError(
        f'a binary leaf of a version {version} file records no count of '
        'nonzero weights per vector, so nothing shows that it restores a '
        'permutation of the initial weights; export it again (version '
        f'{VERSION}).')
  value = np.frombuffer(bytes.fromhex(entry['value']), dtype)
  if value.size != 1:
    raise ValueError(f'the shared value {entry["value"]!r} is not one '
                     f'{dtype.name}.')
  size = math.prod(shape)
  packed = _member(archive, f'{index}.mask', np.uint8, -(-size // 8))
  mask = np.unpackbits(packed, count=size, bitorder='little').astype(bool)
  restored = np.where(mask, value, np.zeros((), dtype)).reshape(shape)
  axes = _read_vector_axes(entry, shape, version)
  if entry['counts'] == 'stored':
    vector_length, num_vectors = as_vectors(restored, vector_axes=axes).shape
    counts = _member(archive, f'{index}.counts',
                     _rank_dtype(vector_length + 1), num_vectors)
    _check_counts(restored, counts, axes)
  elif entry['counts'] == 'init':
    _check_is_permutation(restored, _check_regenerated(
        regenerated, entry['path'], shape, dtype, axes,
        entry['sorted_sha256'], 'init_fn(key)'), axes)
  else:
    raise ValueError(f'unknown source of counts {entry["counts"]!r}.')
  return restored


def _decode_ranks(archive, index, entry, shape, dtype, regenerated,
                  version) -> np.ndarray:
  """A ``ranks`` leaf, checked to be a permutation of its initial values."""
  axes = _read_vector_axes(entry, shape, version)
  vector_length = math.prod(shape[axis] for axis in axes)
  ranks = _read_ranks(archive, f'{index}.ranks', entry['rank_bits'],
                      vector_length, math.prod(shape)).reshape(shape)
  _check_permutations(as_vectors(ranks, vector_axes=axes), vector_length)
  if entry['sorted'] == 'stored':
    bits = _member(archive, f'{index}.sorted', _bits_dtype(dtype),
                   math.prod(shape))
    initial = sorted_init = bits.reshape(shape).view(dtype)
    _check_sha256(sorted_init, entry['sorted_sha256'],
                  'the stored sorted values')
    _check_ascending(sorted_init, axes)
  elif entry['sorted'] == 'init':
    initial = sorted_init = _check_regenerated(
        regenerated, entry['path'], shape, dtype, axes,
        entry['sorted_sha256'], 'init_fn(key)')
  else:
    raise ValueError(f'unknown source of sorted values {entry["sorted"]!r}.')
  restored = _place(sorted_init, ranks, axes)
  _check_is_permutation(restored, initial, axes)
  return restored


def _read_vector_axes(entry, shape, version) -> tuple[int, ...]:
  """The fan-in axes a ``ranks`` entry records (version 1: the default)."""
  if version == 1:
    return _weight_vectors.fan_in_axes(shape)
  axes = entry.get('vector_axes')
  if not isinstance(axes, list):
    raise ValueError(f'the manifest records no vector_axes (found {axes!r}).')
  checked = _weight_vectors.fan_in_axes(shape, tuple(axes),
                                        where='the manifest')
  if list(checked) != axes:
    raise ValueError(f'the manifest records vector_axes {axes!r}, not as '
                     'sorted non-negative axes.')
  return checked


def _member(archive, name, dtype, size) -> np.ndarray:
  """Member ``name``, checked to be ``size`` entries of ``dtype``."""
  data = archive[name]
  if data.dtype != dtype or data.size != size:
    raise ValueError(f'member {name} holds {data.size} entries of '
                     f'{data.dtype}, expected {size} of {np.dtype(dtype)}.')
  return data.reshape(-1)


def _read_ranks(archive, name, bits, vector_length, size) -> np.ndarray:
  if bits is None:
    data = archive[name]
    if data.dtype != _rank_dtype(vector_length) or data.size != size:
      raise ValueError(
          f'member {name} holds {data.size} entries of {data.dtype}, expected '
          f'{size} of {np.dtype(_rank_dtype(vector_length))}.')
    return data.reshape(-1)
  if bits != _rank_bits(vector_length):
    raise ValueError(f'ranks packed in {bits!r} bits; vectors of length '
                     f'{vector_length} take {_rank_bits(vector_length)}.')
  return _unpack(_member(archive, name, np.uint8, -(-size * bits // 8)), bits,
                 size)


def _check_permutations(ranks, vector_length) -> None:
  """Raises unless every column of ``ranks`` is a permutation of 0..n-1."""
  out_of_range = ranks >= vector_length
  if np.any(out_of_range):
    vector = int(np.flatnonzero(out_of_range.any(axis=0))[0])
    raise ValueError(
        f'weight vector {vector} holds rank {int(ranks[:, vector].max())}, '
        f'out of range for vectors of length {vector_length}.')
  seen = np.zeros(ranks.shape, np.bool_)
  seen[ranks, np.arange(ranks.shape[1])] = True
  # n ranks in range cover 0..n-1 exactly when none is missing.
  incomplete = ~seen.all(axis=0)
  if np.any(incomplete):
    vector = int(np.flatnonzero(incomplete)[0])
    missing = int(np.flatnonzero(~seen[:, vector])[0])
    raise ValueError(
        f'the ranks of weight vector {vector} are not a permutation of '
        f'0..{vector_length - 1}: rank {missing} is missing (another is '
        'repeated).')


# The checks below hold whatever hashes the file records: a file edited
# with its hashes recomputed must still restore a permutation of the
# initial weights, the promise the format exists for.


def _check_ascending(sorted_init, axes) -> None:
  """Raises unless every stored weight vector is sorted ascending."""
  keys = _order_keys(as_vectors(sorted_init, vector_axes=axes))
  _refuse_vectors(np.any(keys[1:] < keys[:-1], axis=0), lambda vector: (
      f'the stored sorted values of weight vector {vector} are not in '
      'ascending order'))


def _check_is_permutation(restored, initial, axes) -> None:
  """Raises unless every restored vector is bitwise a permutation of its init.

  Both sides' bit patterns are sorted as unsigned integers, so ``-0.0`` and
  ``0.0``, or two NaN payloads, count as different values.
  """
  def sorted_bits(values):
    # A copy (never a view of `values`), in C order: rows sort in place.
    rows = np.array(_bits(as_vectors(values, vector_axes=axes)).T, order='C')
    rows.sort(axis=1)
    return rows

  _refuse_vectors(
      np.any(sorted_bits(restored) != sorted_bits(initial), axis=1),
      lambda vector: (f'weight vector {vector} is not a permutation of its '
                      'initial values (their bits differ)'))


def _check_counts(restored, counts, axes) -> None:
  """Raises unless every restored vector has its initial count of nonzeros."""
  nonzero = np.count_nonzero(
      as_vectors(_bits(restored), vector_axes=axes) != 0, axis=0)
  _refuse_vectors(nonzero != counts, lambda vector: (
      f'weight vector {vector} holds {nonzero[vector]} nonzero weights, its '
      f'initial values {counts[vector]}, so it is not a permutation of them'))


def _refuse_vectors(offending, describe) -> None:
  """Raises ``describe(vector)`` of the first offending vector, and a count."""
  if np.any(offending):
    vector = int(np.argmax(offending))
    raise ValueError(f'{describe(vector)} ({np.count_nonzero(offending)} of '
                     f'{offending.size} weight vectors are refused).')


def _order_keys(values: np.ndarray) -> np.ndarray:
  """Integers ordered as any backend's sort orders ``values``.

  Floats that some backend compares equal have equal keys: zeros of either
  sign and subnormals (flushed to zero on some backends), and all NaNs
  (after ``+inf``). Other values keep their order exactly.
  """
  if not jnp.issubdtype(values.dtype, jnp.floating):
    return values
  signed = _bits(values).view(f'<i{values.dtype.itemsize}')
  magnitude = signed & np.iinfo(signed.dtype).max
  info = jnp.finfo(values.dtype)
  smallest_normal, inf = (
      _bits(np.asarray(x, values.dtype)).view(signed.dtype)
      for x in (info.smallest_normal, np.inf))
  keys = np.where(magnitude < smallest_normal, 0, magnitude)
  keys = np.where(signed < 0, -keys, keys)
  return np.where(magnitude > inf, inf + 1, keys)


def _check_regenerated(regenerated, name, shape, dtype, axes, sha256,
                       source) -> np.ndarray:
  """The sorted values of ``name`` in ``regenerated``, checked against sha256."""
  leaf = regenerated.get(name)
  if leaf is None:
    raise ValueError(f'{source} returns params without leaf {name}.')
  if tuple(jnp.shape(leaf)) != tuple(shape) or jnp.result_type(leaf) != dtype:
    raise ValueError(
        f'{source} regenerates leaf {name} as {jnp.result_type(leaf)}'
        f'{list(jnp.shape(leaf))}, not {jnp.dtype(dtype).name}{list(shape)}.')
  sorted_init = np.asarray(_weight_vectors.sort_vectors(leaf,
                                                        vector_axes=axes))
  _check_sha256(sorted_init, sha256,
                f'the sorted initial values that {source} regenerates for '
                f'leaf {name}')
  return sorted_init


def _check_sha256(values, sha256, what) -> None:
  if _sha256(values) != sha256:
    raise ValueError(
        f'{what} differ from the exported ones (SHA-256 mismatch: another '
        'key, init function or pruning, or a modified file).')


# ---------------------------------------------------------------------------
# Shared helpers.


def _bits_dtype(dtype) -> np.dtype:
  return np.dtype(f'<u{np.dtype(dtype).itemsize}')


def _bits(array: np.ndarray) -> np.ndarray:
  """``array``'s bit patterns, as unsigned integers of its width."""
  return np.ascontiguousarray(array).view(_bits_dtype(array.dtype))


def _sha256(values: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _rank_bits(vector_length: int) -> int:
  """``ceil(log2 n)`` bits (at least 1) hold the ranks 0..n-1."""
  return max(1, (vector_length - 1).bit_length())


def _rank_dtype(vector_length: int) -> np.dtype:
  for dtype in (np.uint8, np.uint16):
    if vector_length - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  return np.dtype(np.uint32)


def _pack(ranks: np.ndarray, bits: int) -> np.ndarray:
  """The low ``bits`` bits of every uint32 rank, concatenated, LSB first."""
  every_bit = np.unpackbits(ranks.astype('<u4').view(np.uint8).reshape(-1, 4),
                            axis=1, bitorder='little')
  return np.packbits(every_bit[:, :bits].reshape(-1), bitorder='little')


def _unpack(packed: np.ndarray, bits: int, size: int) -> np.ndarray:
  """Inverse of :func:`_pack`: ``size`` ranks as uint32."""
  low_bits = np.unpackbits(packed, count=size * bits,
                           bitorder='little').reshape(size, bits)
  every_bit = np.zeros((size, 32), np.uint8)
  every_bit[:, :bits] = low_bits
  return np.packbits(every_bit, axis=1, bitorder='little').view('<u4')[:, 0]


def _describe(error: BaseException) -> str:
  return str(error) if isinstance(error, ValueError) else (
      f'{type(error).__name__}: {error}')
