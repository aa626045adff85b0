"""The processes of a run check each other before JAX joins them.

``jax.distributed.initialize`` cannot tell apart processes that claim the
same process id, nor see that they disagree on how many processes there
are: they wait for its timeout and then abort with a check-failure stack,
or (a process that counts more processes than process 0 does) are
accepted. So first, :func:`check` has every process tell process 0 its id
and count, over the coordinator's port, before JAX's coordinator service
listens there:

- process 0 listens until every process it counts has spoken, then answers
  each to go on and frees the port for JAX;
- at the first contradiction (a second process with an id, a count that
  differs from another's), it answers every process that has spoken, and
  any that speaks within :data:`LINGER` seconds, with one message saying
  what differs, and every one of them raises it;
- a second process 0 cannot listen on the port, so it speaks to the first
  as any other process does.

Messages are one JSON object per line: ``{"process_id": I,
"num_processes": N}`` to process 0, ``{"error": null | "...", "timed_out":
false | true}`` back.
"""

import collections
import errno
import json
import socket
import time
from typing import Any, NamedTuple, Optional

# Seconds that process 0, having seen a contradiction, still answers
# processes that arrive (those started together with the others).
LINGER = 1.0
# Seconds between a process's attempts to reach process 0 before it listens.
RETRY = 0.1
# Seconds that process 0 waits for a process that reached it to speak.
HELLO = 5.0


class Hello(NamedTuple):
  """What a process tells process 0."""

  process_id: int
  num_processes: int


def contradiction(hellos: list[Hello]) -> Optional[str]:
  """What differs between the processes that spoke, or None.

  Args:
    hellos: Every process's hello so far, process 0's first.

  Returns:
    One line naming each id claimed by several processes and each count
    that differs, with the processes that gave it.
  """
  problems = []
  claims = collections.Counter(hello.process_id for hello in hellos)
  for process_id, count in sorted(claims.items()):
    if count > 1:
      problems.append(f'{count} processes have --process-id {process_id}')
  counted = collections.defaultdict(list)
  for hello in hellos:
    counted[hello.num_processes].append(hello.process_id)
  if len(counted) > 1:
    problems.append('the processes disagree on --num-processes: ' + ', '.join(
        f'{count} (process{"es" if len(ids) > 1 else ""} '
        f'{", ".join(map(str, sorted(ids)))})'
        for count, ids in sorted(counted.items())))
  return '; '.join(problems) or None


def _address(coordinator: str) -> tuple[str, int]:
  host, _, port = coordinator.rpartition(':')
  return host.strip('[]'), int(port)


def _listen(coordinator: str) -> Optional[socket.socket]:
  """A socket listening on the coordinator's port on every interface, as
  JAX's service will; None if another socket listens there already."""
  port = _address(coordinator)[1]
  try:
    if socket.has_dualstack_ipv6():
      return socket.create_server(('', port), family=socket.AF_INET6,
                                  dualstack_ipv6=True)
    return socket.create_server(('', port))
  except OSError as error:
    if error.errno == errno.EADDRINUSE:
      return None
    raise ConnectionError(f'process 0 cannot listen on {coordinator}: '
                          f'{error.strerror or error}') from error


def _read_hello(connection: socket.socket, deadline: float
                ) -> Optional[Hello]:
  """A process's hello; None for a peer that says nothing of the kind."""
  connection.settimeout(min(max(deadline - time.monotonic(), 0.01), HELLO))
  try:
    values = json.loads(connection.makefile('r').readline())
    return Hello(int(values['process_id']), int(values['num_processes']))
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _gather(server: socket.socket, own: Hello, timeout: float
            ) -> tuple[list[Hello], list[socket.socket]]:
  """Process 0: the hellos (its own first) and connections of the others.

  Waits until every process that any hello counts has spoken, for at most
  ``timeout`` seconds, or :data:`LINGER` seconds after a contradiction.
  """
  deadline = time.monotonic() + timeout
  until = deadline
  hellos, connections = [own], []
  while (len(hellos) < max(hello.num_processes for hello in hellos) and
         until > time.monotonic()):
    server.settimeout(until - time.monotonic())
    try:
      connection, _ = server.accept()
    except TimeoutError:
      break
    hello = _read_hello(connection, deadline)
    if hello is None:
      connection.close()
      continue
    hellos.append(hello)
    connections.append(connection)
    if until == deadline and contradiction(hellos):
      until = min(deadline, time.monotonic() + LINGER)
  return hellos, connections


def _serve(server: socket.socket, own: Hello, timeout: float,
           coordinator: str) -> None:
  """Process 0: waits for the others, then answers every one."""
  with server:
    hellos, connections = _gather(server, own, timeout)
  error: Optional[Exception] = None
  if problem := contradiction(hellos):
    error = ValueError(problem)
  elif len(hellos) < own.num_processes:
    error = TimeoutError(
        f'only processes {sorted(hello.process_id for hello in hellos)} of '
        f'{own.num_processes} reached the coordinator {coordinator} within '
        f'{timeout:g} s')
  answer = {'error': None if error is None else str(error),
            'timed_out': isinstance(error, TimeoutError)}
  for connection in connections:
    with connection:
      connection.sendall(json.dumps(answer).encode() + b'\n')
  if error is not None:
    raise error


def _ask(coordinator: str, own: Hello, timeout: float) -> dict[str, Any]:
  """Any process but process 0: speaks to it; returns its answer.

  Tries to reach process 0 for ``timeout`` seconds, then waits for its
  answer as long again and a little more: process 0 listened before this
  process reached it, and answers within ``timeout`` seconds of that.
  """
  deadline = time.monotonic() + timeout
  while True:
    try:
      connection = socket.create_connection(
          _address(coordinator), timeout=max(deadline - time.monotonic(), 0.01))
      break
    except (ConnectionRefusedError, TimeoutError) as error:
      # Process 0 does not listen yet.
      if time.monotonic() + RETRY >= deadline:
        raise TimeoutError(f'process 0 did not answer at {coordinator} '
                           f'within {timeout:g} s') from error
      time.sleep(RETRY)
    except OSError as error:  # An unknown host, no route to it.
      raise ConnectionError(f'cannot reach process 0 at {coordinator}: '
                            f'{error.strerror or error}') from error
  with connection:
    connection.settimeout(timeout + 2 * LINGER)
    try:
      connection.sendall(json.dumps(own._asdict()).encode() + b'\n')
      line = connection.makefile('r').readline()
    except (ConnectionResetError, BrokenPipeError):
      line = ''
  if not line:
    raise ConnectionError(f'process 0 at {coordinator} hung up without an '
                          'answer: it stopped, or the processes had stopped '
                          'over a contradiction before this one arrived')
  try:
    answer = json.loads(line)
    return {'error': answer['error'], 'timed_out': answer['timed_out']}
  except (ValueError, KeyError, TypeError) as error:
    raise ConnectionError(
        f'{coordinator} answered as no process 0 of this run does: is it '
        'the right address, and a port no other program uses?') from error


def check(coordinator: str, num_processes: int, process_id: int,
          timeout: float = 60) -> None:
  """Checks that the processes have distinct ids and the same count.

  Call it in every process, before ``jax.distributed.initialize`` with the
  same arguments.

  Args:
    coordinator: ``HOST:PORT`` of process 0; its port must be free.
    num_processes: How many processes this process counts.
    process_id: This process's index.
    timeout: Seconds to wait for the others (process 0) or for process 0's
      answer (the others).

  Raises:
    ValueError: Processes claim the same id, or disagree on their count
      (the same message in every process).
    TimeoutError: A process did not arrive, or process 0 did not answer.
    ConnectionError: Something other than process 0 answered.
  """
  own = Hello(process_id, num_processes)
  server = _listen(coordinator) if process_id == 0 else None
  if server is not None:
    _serve(server, own, timeout, coordinator)
    return
  answer = _ask(coordinator, own, timeout)
  if answer['error'] is not None:
    raise (TimeoutError if answer['timed_out'] else ValueError)(
        answer['error'])
