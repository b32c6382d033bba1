"""One framework a process: the side-by-side benchmarks run tfrcnn and torchvision each in its own
spawned process (importing torch after TensorFlow crashes the interpreter here, and either
framework loaded beside the other slows the other's matrix products down).

The parent holds a :class:`Worker`; the child runs :func:`serve` with a handler that answers its
commands. Every answer is ``("ok", value)`` or ``("error", text)``, which the parent raises.
"""

import multiprocessing
import os
import traceback


def serve(connection, name, handle):
    """Answers ``(command, payload)`` messages on ``connection`` with ``handle(command, payload)``
    until the command "exit". A handler's exception goes back to the parent as its text, with
    ``name`` and the command, and the loop goes on."""
    while True:
        command, payload = connection.recv()
        if command == "exit":
            connection.send(("ok", None))
            return
        try:
            connection.send(("ok", handle(command, payload)))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which raises
            connection.send(("error", f"{name} {command}: {error!r}\n{traceback.format_exc()}"))


class Worker:
    """A spawned process running ``target(connection, *args)`` (which calls :func:`serve`).

    ``env``: environment variables for the child's start only (a spawned interpreter inherits the
    parent's environment; variables such as ``GLIBC_TUNABLES`` are read by the C library at start).
    """

    def __init__(self, target, args=(), env=None):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), daemon=True)
        saved = {key: os.environ.get(key) for key in (env or {})}
        os.environ.update(env or {})
        try:
            self.process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def ask(self, command, payload=None):
        """Sends a command and returns the child's answer (raises ``RuntimeError`` on an error)."""
        self.connection.send((command, payload))
        status, value = self.connection.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def close(self):
        try:
            self.ask("exit")
        finally:
            self.process.join(timeout=30)
