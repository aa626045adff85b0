"""LaPerm on several devices: sharded state, bitwise results, local syncs.

The checks need 8 devices, and ``--xla_force_host_platform_device_count``
only acts before JAX initializes, while the rest of the suite (pytest-xdist
workers that already imported JAX) must keep one device. So this module runs
itself as a script in one subprocess with the flag set (``JAX_PLATFORMS=cpu``:
8 host devices on any machine), which runs every check and prints the
results as JSON; each test below asserts one of them.

What the checks establish, on a mesh of 8 CPU devices and a tree holding a
Dense kernel ``(64, 32)``, a Conv kernel ``(3, 3, 8, 16)`` and a bias:

- **State shardings.** ``jax.jit(tx.init)`` on sharded params gives
  ``sorted_init`` the params' shardings when the params are replicated (data
  parallel) or sharded along the output axis (model parallel); Adam's
  moments do not follow (optax builds them as constants, which XLA
  replicates). Along an input axis, the Dense kernel's ``sorted_init`` keeps
  its sharding but the Conv kernel's comes out replicated: its vector axis
  flattens ``(3, 3, 8)`` with the sharded axis innermost, which no tiling of
  the flattened axis expresses, so XLA gathers. ``jax.jit(tx.init,
  out_shardings=...)`` with the shardings built by ``optax.tree.map_params``
  (``state_shardings`` below) gives every state leaf that mirrors a param
  the param's sharding in every layout, and a jitted step given only
  ``in_shardings`` returns params, updates and state in the same shardings.
- **Bitwise equality.** With the same gradients, 7 steps of
  ``lp.laperm(optax.adam(0.05), 2)`` (3 syncs) give bit for bit the updates,
  params and state of one device at every step, for replicated params,
  kernels sharded along the output axis (1-D mesh, and a 2x4 ``('data',
  'model')`` mesh) and kernels sharded along an input axis; so does
  ``lp.synchronize`` of the last step's params (output and input axis).
- **Output-axis syncs are local.** The compiled HLO of ``lp.synchronize``
  and of a whole ``tx.update`` (both ``lax.cond`` branches) on kernels
  sharded along their output axis holds no ``all-gather``, ``all-to-all``,
  ``collective-permute``, ``all-reduce`` or ``reduce-scatter``: each device
  sorts its own weight vectors (the sorts run on the per-device rows, e.g.
  ``[4,64]`` for the Dense kernel, never on the global ``[32,64]``). This
  holds for the CPU path (radix order from integer sorts) and for the
  key-value sort that GPUs and TPUs use (checked on CPU by swapping it in).
- **Chunked CPU syncs stay local.** On CPU, large leaves sync chunk by chunk
  (each chunk is blocks of adjacent vectors taken at a stride), so every
  device holds its part of each chunk: with a smaller chunk size, kernels
  ``(64, 256)`` and ``(3, 3, 8, 256)`` sharded along the output axis sync in
  2 chunks with no collective (sorts of ``[16, length]`` rows per device),
  and two sync steps give bitwise the updates, params and state of one
  device.
- **Layouts keep output-axis syncs local.** An attention kernel
  ``(features, heads, head_dim)`` with ``vector_axes=(0,)`` sharded over its
  heads: each device holds whole weight vectors (``heads * head_dim``
  vectors of length ``features``, flattened head-major), so the compiled
  ``tx.update`` at a sync step and ``lp.synchronize`` hold no collective,
  whole and in 2 chunks, and four steps (two syncs) give bitwise the
  updates, params and state of one device.
- **Input-axis syncs communicate.** Sharding an input axis splits every
  weight vector across devices, and a sort along it needs whole vectors.
  The compiled ``lp.synchronize`` (params and state sharded along the input
  axis, same ``out_shardings``) holds, on CPU:

  - Dense kernel ``(in, out)`` sharded along ``in``: XLA partitions the
    sorts itself: each radix pass is an ``all-to-all`` to one eighth of the
    whole vectors per device, a local sort, and an ``all-to-all`` back (4
    all-to-alls of one shard each); the gathers between passes and the
    scatter then ``all-gather`` the whole keys (u32), order (s32, twice) and
    sorted values (f32), and one ``all-reduce`` combines the per-vector
    finiteness flags (``pred[out]``). Per device that is about 4.5 kernel
    sizes received per sync (benchmark: 18.9 MB for a 4.2 MB
    ``(1024, 1024)`` float32 kernel on 8 devices).
  - Conv kernel ``(h, w, in, out)`` sharded along ``in``: the flattening
    reshape to ``(h * w * in, out)`` has the sharded axis innermost, which no
    tiling expresses, so XLA ``all-gather``s the kernel and its
    ``sorted_init`` (2 kernel sizes per device), every device runs the whole
    sync, and keeps its slice.

  The results stay bitwise those of one device; only the cost differs
  (``benchmarks/sync_devices.py`` times it). Shard kernels along their
  output axis where the sync cost matters.
"""

import json
import pathlib
import re

import pytest

DEVICES = 8
COLLECTIVES = ('all-gather', 'all-to-all', 'collective-permute', 'all-reduce',
               'reduce-scatter', 'collective-broadcast', 'ragged-all-to-all')


def collectives(hlo_text):
  """The collective ops of compiled HLO text, in order (async ops once)."""
  pattern = r'\s(' + '|'.join(COLLECTIVES) + r')(?:-start)?\('
  return re.findall(pattern, hlo_text)


@pytest.fixture(scope='module')
def results(run_on_host_devices):
  return run_on_host_devices(pathlib.Path(__file__).resolve())


def _check(results, name):
  result = results[name]
  assert result['ok'], result['error']
  return result


def test_subprocess_sees_eight_devices(results):
  assert _check(results, 'devices')['count'] == DEVICES


@pytest.mark.parametrize('layout', ['replicated', 'output', 'output_2d'])
def test_jitted_init_shards_sorted_init_like_params(results, layout):
  _check(results, f'init_shardings_{layout}')


def test_jitted_init_of_input_axis_conv_is_documented(results):
  # The docstring's claim; if XLA learns to keep this sharding, update it.
  assert _check(results, 'init_shardings_input')['mismatches'] == [
      "['conv']: P() != P(None, None, 'model', None)"]


@pytest.mark.parametrize('layout',
                         ['replicated', 'output', 'output_2d', 'input'])
def test_updates_and_state_bitwise_equal_to_one_device(results, layout):
  result = _check(results, f'bitwise_{layout}')
  assert result['syncs'] == 3


@pytest.mark.parametrize('layout',
                         ['replicated', 'output', 'output_2d', 'input'])
def test_state_keeps_params_shardings_through_updates(results, layout):
  # init with out_shardings from optax.tree.map_params; the jitted step has
  # in_shardings only, and returns params, updates and state in the same
  # shardings.
  assert _check(results, f'bitwise_{layout}')['sharding_mismatches'] == []


def test_output_axis_synchronize_is_local(results):
  _check(results, 'hlo_output_synchronize')


def test_output_axis_update_is_local(results):
  _check(results, 'hlo_output_update')


def test_output_axis_key_value_sort_is_local(results):
  # The GPU/TPU path, swapped in on CPU.
  _check(results, 'hlo_output_key_value')


def test_chunked_output_axis_sync_is_local_and_bitwise(results):
  assert _check(results, 'chunked_output')['chunks'] == [2, 2]


def test_attention_kernel_sharded_over_heads_syncs_locally(results):
  # vector_axes=(0,) on (features, heads, head_dim), heads sharded: no
  # collective in the compiled sync or update, bitwise one device.
  assert _check(results, 'attention_heads')['chunks'] == {'plain': 1,
                                                          'chunked': 2}


def test_input_axis_sync_gathers_the_vectors(results):
  result = _check(results, 'hlo_input_synchronize')
  assert {'all-gather', 'all-to-all'} & set(result['collectives'])


# ---------------------------------------------------------------------------
# The subprocess.


def _main():
  """Runs every check; prints ``{name: {'ok', 'error', ...}}`` as JSON."""
  # pylint: disable=import-outside-toplevel
  import functools
  import time
  import traceback

  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  import jax.numpy as jnp
  import numpy as np
  import optax

  import laperm_jax as lp
  from laperm_jax import _weight_vectors

  out = {}

  def check(name):
    def run(fn):
      start = time.perf_counter()
      try:
        out[name] = {'ok': True, 'error': '', **(fn() or {})}
      except Exception:  # pylint: disable=broad-except
        out[name] = {'ok': False, 'error': traceback.format_exc()}
      out[name]['seconds'] = round(time.perf_counter() - start, 2)
      return fn
    return run

  devices = jax.devices()
  mesh = Mesh(np.array(devices), ('model',))
  mesh_2d = Mesh(np.array(devices).reshape(2, 4), ('data', 'model'))
  rng = np.random.default_rng(0)
  shapes = {'dense': (64, 32), 'conv': (3, 3, 8, 16), 'bias': (32,)}
  params = {name: rng.standard_normal(shape, np.float32)
            for name, shape in shapes.items()}
  specs = {
      'replicated': (mesh, {'dense': P(), 'conv': P(), 'bias': P()}),
      'output': (mesh, {'dense': P(None, 'model'),
                        'conv': P(None, None, None, 'model'),
                        'bias': P('model')}),
      'output_2d': (mesh_2d, {'dense': P(None, 'model'),
                              'conv': P(None, None, None, 'model'),
                              'bias': P('model')}),
      'input': (mesh, {'dense': P('model', None),
                       'conv': P(None, None, 'model', None),
                       'bias': P()}),
  }

  def shardings(layout):
    layout_mesh, layout_specs = specs[layout]
    return {name: NamedSharding(layout_mesh, spec)
            for name, spec in layout_specs.items()}

  tx = lp.laperm(optax.adam(0.05), 2)
  steps, sync_steps = 7, (2, 4, 6)
  grads = [{name: rng.standard_normal(shape, np.float32)
            for name, shape in shapes.items()} for _ in range(steps)]

  def is_masked(x):
    return isinstance(x, optax.MaskedNode)

  def state_shardings(param_shardings, layout_mesh, tx=tx, params=params):
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree.map_params(
        tx, lambda leaf, sharding: leaf if is_masked(leaf) else sharding,
        abstract, param_shardings, is_leaf=is_masked,
        transform_non_params=lambda _: NamedSharding(layout_mesh, P()))

  def mismatches(tree, expected):
    """Paths whose array's sharding differs from ``expected``'s."""
    wrong = []
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_masked)[0]
    for (path, leaf), sharding in zip(
        flat, jax.tree.leaves(expected, is_leaf=is_masked)):
      if is_masked(leaf):
        continue
      if not leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
        wrong.append(f'{jax.tree_util.keystr(path)}: {leaf.sharding.spec} '
                     f'!= {sharding.spec}')
    return wrong

  @check('devices')
  def _():
    return {'count': jax.device_count(), 'kind': devices[0].device_kind}

  for layout in specs:
    @check(f'init_shardings_{layout}')
    def _(layout=layout):
      param_shardings = shardings(layout)
      state = jax.jit(tx.init)(jax.device_put(params, param_shardings))
      # Adam's moments are constants to XLA, which replicates them: only an
      # explicit out_shardings shards them.
      wrong = mismatches(state.sorted_init, param_shardings)
      if layout != 'input':
        assert not wrong, wrong
      return {'mismatches': wrong}

  def train(param_shardings=None, state_sh=None):
    """Steps ``tx``; returns per step (params, updates, state).

    Sharded, ``init`` gets ``out_shardings`` and the step only
    ``in_shardings``: what it returns must keep them (checked here).
    """
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), updates, state

    wrong = []
    if param_shardings is None:
      init, step = jax.jit(tx.init), jax.jit(step)
      current = jax.device_put(params, devices[0])
      put = lambda tree: jax.device_put(tree, devices[0])
    else:
      init = jax.jit(tx.init, out_shardings=state_sh)
      step = jax.jit(
          step, in_shardings=(param_shardings, state_sh, param_shardings))
      current = jax.device_put(params, param_shardings)
      put = lambda tree: jax.device_put(tree, param_shardings)
    state = init(current)
    if param_shardings is not None:
      wrong += [f'init: {w}' for w in mismatches(state, state_sh)]
    history = []
    for number, g in enumerate(grads, 1):
      current, updates, state = step(current, state, put(g))
      history.append((current, updates, state))
      if param_shardings is not None:
        for name, tree, expected in (
            ('params', current, param_shardings),
            ('updates', updates, param_shardings),
            ('state', state, state_sh)):
          wrong += [f'step {number} {name}: {w}'
                    for w in mismatches(tree, expected)]
    return history, wrong

  reference = []

  @check('reference')
  def _():
    reference.extend(train()[0])
  final = {}  # layout -> (params, state) after the last step
  for layout in specs:
    @check(f'bitwise_{layout}')
    def _(layout=layout):
      param_shardings = shardings(layout)
      state_sh = state_shardings(param_shardings, specs[layout][0])
      history, wrong_shardings = train(param_shardings, state_sh)
      final[layout] = history[-1][0], history[-1][2]
      syncs = 0
      for step, (got, want) in enumerate(zip(history, reference), 1):
        got_leaves = jax.tree.leaves(got)
        want_leaves = jax.tree.leaves(want)
        assert len(got_leaves) == len(want_leaves)
        for a, b in zip(got_leaves, want_leaves):
          np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                        err_msg=f'step {step}')
        if step in sync_steps:
          syncs += 1
          assert int(got[2].steps_since_sync) == 0
      return {'syncs': syncs, 'sharding_mismatches': wrong_shardings}

  def local_sorts(hlo_text):
    """Asserts every kernel is sorted in per-device rows, never globally."""
    sort_lines = [line for line in hlo_text.splitlines()
                  if ' sort(' in line]
    assert sort_lines, 'no sort in the HLO'
    text = '\n'.join(sort_lines)
    for leaf in (params['dense'], params['conv']):
      num_vectors, length = lp.as_vectors(leaf).shape[::-1]
      local = f'[{num_vectors // DEVICES},{length}]'
      assert local in text, (local, text)
      assert f'[{num_vectors},{length}]' not in text, text

  reference_sync = []

  @check('reference_synchronize')
  def _():
    reference_sync.append(
        jax.jit(lp.synchronize)(reference[-1][0], reference[-1][2]))

  def compiled_sync(layout):
    """Compiles ``lp.synchronize`` for ``layout``; checks its results.

    On the last step's params and state, the result is bitwise the one
    device result, in the params' shardings, and exactly a permutation.
    """
    param_shardings = shardings(layout)
    state_sh = state_shardings(param_shardings, specs[layout][0])
    current, state = final[layout]
    compiled = jax.jit(
        lp.synchronize, in_shardings=(param_shardings, state_sh),
        out_shardings=param_shardings).lower(current, state).compile()
    synced = compiled(current, state)
    for name in params:
      np.testing.assert_array_equal(np.asarray(synced[name]),
                                    np.asarray(reference_sync[0][name]))
      assert synced[name].sharding.is_equivalent_to(param_shardings[name],
                                                    params[name].ndim)
    for name in ('dense', 'conv'):
      np.testing.assert_array_equal(
          np.sort(np.asarray(synced[name]).reshape(
              -1, params[name].shape[-1]), axis=0),
          np.asarray(state.sorted_init[name]).reshape(
              -1, params[name].shape[-1]))
    return compiled.as_text()

  @check('hlo_output_synchronize')
  def _():
    text = compiled_sync('output')
    found = collectives(text)
    assert not found, found
    local_sorts(text)

  @check('hlo_output_update')
  def _():
    param_shardings = shardings('output')
    state_sh = state_shardings(param_shardings, mesh)
    current, state = final['output']
    # At a sync step: steps_since_sync + 1 reaches the period.
    state = state._replace(steps_since_sync=jnp.ones([], jnp.int32))
    update = jax.jit(tx.update,
                     in_shardings=(param_shardings, state_sh, param_shardings),
                     out_shardings=(param_shardings, state_sh))
    compiled = update.lower(current, state, current).compile()
    text = compiled.as_text()
    found = collectives(text)
    assert not found, found
    local_sorts(text)
    _, new_state = compiled(jax.device_put(grads[0], param_shardings), state,
                            current)
    assert int(new_state.steps_since_sync) == 0  # It synced.

  @check('hlo_input_synchronize')
  def _():
    found = collectives(compiled_sync('input'))
    return {'collectives': sorted(set(found)),
            'counts': {name: found.count(name) for name in set(found)}}

  @check('hlo_output_key_value')
  def _():
    # Last: swapping the order function needs fresh traces.
    radix = _weight_vectors._rank_order  # pylint: disable=protected-access
    try:
      _weight_vectors._rank_order = (  # pylint: disable=protected-access
          _weight_vectors._comparison_rank_order)  # pylint: disable=protected-access
      jax.clear_caches()
      text = compiled_sync('output')
      found = collectives(text)
      assert not found, found
      local_sorts(text)
      assert 'u32' not in text  # The key-value sort, not the radix passes.
    finally:
      _weight_vectors._rank_order = radix  # pylint: disable=protected-access
      jax.clear_caches()

  @check('chunked_output')
  def _():
    # A smaller chunk size makes these kernels sync in chunks on CPU.
    chunk_weights = _weight_vectors._CHUNK_WEIGHTS  # pylint: disable=protected-access
    try:
      _weight_vectors._CHUNK_WEIGHTS = 512  # pylint: disable=protected-access
      jax.clear_caches()
      big = {'dense': rng.standard_normal((64, 256), np.float32),
             'conv': rng.standard_normal((3, 3, 8, 256), np.float32)}
      chunks = [_weight_vectors._chunking(256, x.size // 256)[0]  # pylint: disable=protected-access
                for x in big.values()]
      big_tx = lp.laperm(optax.adam(0.05), 1)  # Every step syncs.
      param_sh = {'dense': NamedSharding(mesh, P(None, 'model')),
                  'conv': NamedSharding(mesh, P(None, None, None, 'model'))}
      state_sh = state_shardings(param_sh, mesh, big_tx, big)

      def step(params, state, grads):
        updates, state = big_tx.update(grads, state, params)
        return optax.apply_updates(params, updates), updates, state

      sharded = jax.jit(step, in_shardings=(param_sh, state_sh, param_sh))
      compiled = sharded.lower(big, big_tx.init(big), big).compile()
      text = compiled.as_text()
      found = collectives(text)
      assert not found, found
      assert ' while(' in text
      sort_lines = '\n'.join(line for line in text.splitlines()
                             if ' sort(' in line)
      for length in (64, 72):
        assert f'[16,{length}]' in sort_lines, sort_lines
      one = jax.jit(step)
      state_one = jax.jit(big_tx.init)(big)
      state = jax.jit(big_tx.init, out_shardings=state_sh)(
          jax.device_put(big, param_sh))
      current_one, current = big, jax.device_put(big, param_sh)
      for _ in range(2):
        g = {name: rng.standard_normal(x.shape, np.float32)
             for name, x in big.items()}
        *got, state = compiled(current, state, jax.device_put(g, param_sh))
        *want, state_one = one(current_one, state_one, g)
        for a, b in zip(jax.tree.leaves((got, state)),
                        jax.tree.leaves((want, state_one))):
          np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        current, current_one = got[0], want[0]
      return {'chunks': chunks}
    finally:
      _weight_vectors._CHUNK_WEIGHTS = chunk_weights  # pylint: disable=protected-access
      jax.clear_caches()

  @check('attention_heads')
  def _():
    # An attention kernel (features, heads, head_dim) has the fan-in axis 0
    # (vector_axes=(0,)): sharded over its heads, each device holds whole
    # weight vectors. Plain and (with a smaller chunk size) chunked syncs.
    chunk_weights = _weight_vectors._CHUNK_WEIGHTS  # pylint: disable=protected-access
    results = {}
    try:
      for name, shape, chunk in (('plain', (16, 8, 4), chunk_weights),
                                 ('chunked', (64, 8, 32), 512)):
        _weight_vectors._CHUNK_WEIGHTS = chunk  # pylint: disable=protected-access
        jax.clear_caches()
        layout = {'query': (0,)}
        length, num_vectors = shape[0], shape[1] * shape[2]
        chunks = _weight_vectors._chunking(num_vectors, length)[0]  # pylint: disable=protected-access
        heads = {'query': rng.standard_normal(shape, np.float32)}
        heads_tx = lp.laperm(optax.adam(0.05), 2, vector_axes=layout)
        param_sh = {'query': NamedSharding(mesh, P(None, 'model', None))}
        state_sh = state_shardings(param_sh, mesh, heads_tx, heads)

        def step(params, state, grads, heads_tx=heads_tx):
          updates, state = heads_tx.update(grads, state, params)
          return optax.apply_updates(params, updates), updates, state

        sharded = jax.jit(step, in_shardings=(param_sh, state_sh, param_sh))
        state = jax.jit(heads_tx.init, out_shardings=state_sh)(
            jax.device_put(heads, param_sh))
        # At a sync step: steps_since_sync + 1 reaches the period.
        at_sync = state._replace(steps_since_sync=jnp.ones([], jnp.int32))
        update_text = sharded.lower(heads, at_sync, heads).compile().as_text()
        sync = functools.partial(lp.synchronize, vector_axes=layout)
        compiled_sync = jax.jit(
            sync, in_shardings=(param_sh, state_sh),
            out_shardings=param_sh).lower(heads, state).compile()
        for text in (update_text, compiled_sync.as_text()):
          found = collectives(text)
          assert not found, found
          sort_lines = '\n'.join(line for line in text.splitlines()
                                 if ' sort(' in line)
          per_device = num_vectors // DEVICES // chunks
          assert f'[{per_device},{length}]' in sort_lines, sort_lines
          assert f'[{num_vectors},{length}]' not in sort_lines, sort_lines
        one = jax.jit(step)
        state_one = jax.jit(heads_tx.init)(heads)
        current_one, current = heads, jax.device_put(heads, param_sh)
        for _ in range(4):  # Two syncs.
          g = {'query': rng.standard_normal(shape, np.float32)}
          *got, state = sharded(current, state, jax.device_put(g, param_sh))
          *want, state_one = one(current_one, state_one, g)
          for a, b in zip(jax.tree.leaves((got, state)),
                          jax.tree.leaves((want, state_one))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
          current, current_one = got[0], want[0]
        synced = compiled_sync(current, state)
        want = jax.jit(sync)(current_one, state_one)
        np.testing.assert_array_equal(np.asarray(synced['query']),
                                      np.asarray(want['query']))
        assert synced['query'].sharding.is_equivalent_to(param_sh['query'], 3)
        # Every (head, dim) fan-in is a permutation of its initial values.
        np.testing.assert_array_equal(
            np.sort(np.asarray(synced['query']).reshape(length, -1), axis=0),
            np.sort(heads['query'].reshape(length, -1), axis=0))
        results[name] = chunks
      return {'chunks': results}
    finally:
      _weight_vectors._CHUNK_WEIGHTS = chunk_weights  # pylint: disable=protected-access
      jax.clear_caches()

  print(json.dumps(out))


if __name__ == '__main__':
  _main()
