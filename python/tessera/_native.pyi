"""Type stubs of the compiled extension ``tessera._native``.

The public API is the Python layer (:mod:`tessera`); this module is its
Rust half: the SDK client, the in-process server and the accountant.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

class Client:
    """The Rust SDK's client (``tessera_client::Client``) with its own
    tokio runtime; calls release the GIL while they wait."""

    def __init__(
        self,
        url: str,
        token: Optional[str],
        ca_pem: Optional[bytes],
        client_cert_pem: Optional[bytes],
        client_key_pem: Optional[bytes],
        identity_key: Optional[str],
        trusted_identities: Optional[str],
        insecure_loopback: bool,
        policy: Optional[object],
        round_timeout: Optional[float],
    ) -> None: ...
    @property
    def url(self) -> str:
        """The server URL."""
    def model(
        self, version: int
    ) -> Tuple[
        int, int, float, float, Optional[str], List[Tuple[str, List[int], npt.NDArray[np.float32]]], float
    ]:
        """Downloads model ``version`` (0: the latest): version, round,
        epsilon, delta, whom epsilon holds against (``"server"``,
        ``"model-consumers"`` or ``None``, the server ledger's word),
        ``(name, shape, flat values)`` per tensor, and the FedProx mu the
        server runs with (0: off)."""
    def participate(
        self,
        update: npt.NDArray[np.float32],
        num_examples: Optional[int] = None,
        evaluation: Optional[Tuple[int, int, float]] = None,
    ) -> Dict[str, object]:
        """Runs one round with a flat float32 update (and, for a server
        that asks, its example count and evaluation); the outcome's
        fields (``proximal_mu`` among them: the round's FedProx mu)."""
    def participate_or_drop(
        self,
        update: npt.NDArray[np.float32],
        stage: str,
        num_examples: Optional[int] = None,
        evaluation: Optional[Tuple[int, int, float]] = None,
    ) -> Optional[Dict[str, object]]:
        """Like ``participate``, but hangs up before sending ``stage``'s
        message: ``None`` if it dropped."""

class Server:
    """``tessera_server::start`` in process, on its own runtime."""

    def __init__(
        self,
        config: Optional[str],
        settings: Dict[str, Union[bool, int, float, str]],
        insecure_dev: bool,
        raise_budget: bool,
        recompute_delta: bool,
    ) -> None: ...
    @property
    def url(self) -> str:
        """The URL clients dial."""
    @property
    def data_dir(self) -> str:
        """The data directory."""
    def mint_token(self, name: str, expires_in: Optional[float] = None) -> str:
        """Makes a token, appends its hash to the tokens file, reloads it."""
    def stop(self) -> None:
        """Ends the round in flight and stops; idempotent."""

def _raise_sdk_error(variant: str) -> None:
    """Raises the exception the SDK error ``variant`` maps to (a test hook
    covering variants a real server cannot be made to cause)."""

def write_safetensors(path: str, tensors: Sequence[Tuple[str, npt.NDArray[np.float32]]]) -> None:
    """Writes named float32 tensors as a safetensors file."""

def epsilon(*, noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> Tuple[float, float]:
    """Epsilon and the optimal Rényi order after ``rounds`` rounds."""

def noise(*, target_epsilon: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier within ``target_epsilon``."""

def rounds(*, noise_multiplier: float, sampling_rate: float, target_epsilon: float, delta: float) -> int:
    """How many rounds fit within ``target_epsilon``."""

def tree_epsilon(*, noise_multiplier: float, steps_per_epoch: int, epochs: int, delta: float) -> Tuple[float, float]:
    """DP-FTRL: epsilon and the optimal Rényi order after ``epochs`` trees."""

def tree_noise(*, target_epsilon: float, steps_per_epoch: int, epochs: int, delta: float) -> float:
    """DP-FTRL: the smallest noise multiplier within ``target_epsilon``."""

def tree_rounds(*, noise_multiplier: float, steps_per_epoch: int, target_epsilon: float, delta: float) -> int:
    """DP-FTRL: how many rounds (the last tree may be partial) fit within ``target_epsilon``."""

def simulate(
    *,
    clients: Optional[int] = None,
    dim: Optional[int] = None,
    graph: Optional[str] = None,
    neighbours: Optional[int] = None,
    threshold: Optional[int] = None,
    dropout_rate: Optional[float] = None,
    corrupt_rate: Optional[float] = None,
    threat_model: Optional[str] = None,
    drops: Optional[List[str]] = None,
    bits: Optional[int] = None,
    prg: Optional[str] = None,
    rounds: int = 1,
    seed: Optional[int] = None,
    faults: Optional[str] = None,
    threads: Optional[int] = None,
    on_warning: Optional[Callable[[str], None]] = None,
) -> List[str]:
    """Runs ``rounds`` simulated rounds planned as ``tessera simulate``
    plans them and returns each round's JSON line, as the command prints it.

    Each keyword is the command's flag of that name (``dropout_rate`` is
    ``--dropout-rate``; ``drops`` holds ``--drop`` values, ``STAGE=FRACTION``);
    ``None`` takes the command's default. Integers must already fit their
    Rust types (``tessera.simulate`` checks). ``on_warning`` is called with
    each warning the command prints on stderr, before the rounds run.
    Refusals raise ``InvalidInput`` with the command's message."""

def simulate_defaults() -> Dict[str, object]:
    """The request ``tessera simulate`` makes with no flags, by keyword."""
