"""An aggregation server in this process (``tessera_server::start``)."""

from __future__ import annotations

import os
import tempfile
from typing import Mapping, Optional, Union

import numpy as np

from tessera import _native
from tessera.errors import InvalidInput

__all__ = ["Server"]

_PathLike = Union[str, "os.PathLike[str]"]


class Server:
    """Starts an aggregation server in this process, so a script or a
    notebook can run a whole federation.

    Settings are the server's own (those of ``tessera serve`` and its
    TOML file): give them as keyword arguments named as the TOML keys
    (``min_clients=3``, ``dim=10``, ``dp="central"``, ``tokens_file=...``),
    or as a TOML file ``config``; keywords override the file. They are
    parsed and checked by the server's one settings table, so an unknown
    keyword is refused with the list of known ones.

    Without ``listen`` the server listens on ``127.0.0.1`` on a free port;
    without ``data_dir`` it keeps its state in a temporary directory
    removed when the server is stopped and dropped.

    Args:
        config: a TOML settings file, as ``tessera serve --config`` reads.
        initial_model: the model to start from, as a mapping of names to
            float32 arrays (written to a temporary safetensors file and
            given as the ``initial_model`` setting): its names and shapes
            are the published models'. Without it, give ``dim=``.
        insecure_dev: no TLS, loopback only, for local experiments (a
            command-line-only switch, as ``--insecure-dev``). With a
            ``tokens_file``, tokens are still checked.
        raise_budget: allow an ``epsilon_budget`` above the data
            directory's ledger (``--raise-budget``).
        recompute_delta: allow a ``delta`` other than the ledger's
            (``--recompute-delta``).
        **settings: any server setting by its TOML key.

    Raises:
        InvalidInput: a bad setting (named).
        ServerError: the server could not start.

    Use it as a context manager, or call :meth:`stop`::

        with tessera.Server(dim=10, min_clients=3, insecure_dev=True) as server:
            client = tessera.Client(server.url)
    """

    def __init__(
        self,
        config: Optional[_PathLike] = None,
        *,
        initial_model: Optional[Mapping[str, "np.typing.ArrayLike"]] = None,
        insecure_dev: bool = False,
        raise_budget: bool = False,
        recompute_delta: bool = False,
        **settings: object,
    ) -> None:
        self._model_dir: Optional[tempfile.TemporaryDirectory[str]] = None
        settings = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in settings.items()}
        if initial_model is not None:
            if "initial_model" in settings:
                raise InvalidInput("give initial_model once: a mapping of arrays or a path, not both")
            settings["initial_model"] = self._write_model(initial_model)
        tokens_file = settings.get("tokens_file")
        if isinstance(tokens_file, str) and not os.path.exists(tokens_file):
            # An empty tokens file admits nobody until mint_token adds one.
            fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        self._native = _native.Server(
            None if config is None else os.fspath(config),
            settings,
            insecure_dev,
            raise_budget,
            recompute_delta,
        )

    def _write_model(self, model: Mapping[str, "np.typing.ArrayLike"]) -> str:
        tensors = []
        for name, value in sorted(model.items()):
            array = np.asarray(value)
            if not np.issubdtype(array.dtype, np.floating):
                raise InvalidInput(
                    f"initial_model tensor '{name}' has dtype {array.dtype}: models are float32 "
                    "(keep integer buffers such as batch-norm counters out of the model)"
                )
            tensors.append((str(name), np.ascontiguousarray(array, dtype=np.float32)))
        self._model_dir = tempfile.TemporaryDirectory(prefix="tessera-model-")
        path = os.path.join(self._model_dir.name, "initial.safetensors")
        _native.write_safetensors(path, tensors)
        return path

    def __repr__(self) -> str:
        return f"tessera.Server(url={self.url!r})"

    @property
    def url(self) -> str:
        """The URL clients dial (``http://127.0.0.1:PORT`` for an
        ``insecure_dev`` server, ``https://...`` with TLS)."""
        return self._native.url

    @property
    def data_dir(self) -> str:
        """The server's data directory (published models, ledger)."""
        return os.fspath(self._native.data_dir)

    def mint_token(self, name: str, *, expires_in: Optional[float] = None) -> str:
        """Makes a token for client ``name``, appends its hash to the
        server's tokens file and reloads the file, and returns the token
        (it is not stored anywhere). The server must have been started
        with ``tokens_file=PATH`` (created empty if missing).

        Args:
            name: the client's name (printable ASCII, not already in the
                file).
            expires_in: seconds until the token expires (default: never).
        """
        return self._native.mint_token(name, expires_in)

    def stop(self) -> None:
        """Ends the round in flight (its clients are told the server is
        going away) and stops the server. Idempotent."""
        self._native.stop()
        if self._model_dir is not None:
            self._model_dir.cleanup()
            self._model_dir = None

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
