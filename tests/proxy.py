"""A TCP forwarder the test owns: what a broker going down looks like to a client, without
stopping a broker other people share. ``stop()`` closes the listening port and every
forwarded connection: the client sees its connection reset and the port refused.
``hold()`` keeps back what the broker sends (its replies, its confirms) until ``release()``;
``sent`` keeps what each client sent."""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` until :meth:`stop`; ``port`` 0 picks a
    free one, the port of a stopped proxy brings the "broker" back where it was."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._flowing = threading.Event()  # cleared: the broker's bytes wait in the proxy
        self._flowing.set()
        #: What each client sent, one entry per accepted connection (read it after the client
        #: is done: the piping threads append to it).
        self.sent: list[bytearray] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stopped:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                sent = bytearray()
                self.sent.append(sent)
            pipes = ((client, upstream, None, sent), (upstream, client, self._flowing, bytearray()))
            for a, b, gate, seen in pipes:
                threading.Thread(target=self._pipe, args=(a, b, gate, seen), daemon=True).start()

    @staticmethod
    def _pipe(
        source: socket.socket, sink: socket.socket, gate: threading.Event | None, seen: bytearray
    ) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if gate is not None:
                    gate.wait()
                seen += data
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def hold(self) -> None:
        """From now on keep what the broker sends, until :meth:`release`."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def stop(self) -> None:
        """The broker is down: the port refuses, open connections are reset."""
        with self._lock:
            self._stopped = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        self._flowing.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            sock.close()
