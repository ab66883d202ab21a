"""The one training engine of the classifier, SANCE and DeepLab.

* :mod:`~sance_core.engine.loop` - :func:`fit`: epochs, poly learning rate, AMP, gradient clipping,
  the finite guards, history rows, checkpoints, deterministic resume, the end-of-epoch hook;
* :mod:`~sance_core.engine.checkpoint` - :class:`CheckpointPolicy` (by time, epoch or iteration),
  :class:`CheckpointManager` and the resume :func:`fingerprint`;
* :mod:`~sance_core.engine.sampler` - :class:`EpochBatches`, batches keyed on (seed, epoch, position);
* :mod:`~sance_core.engine.schedule`, :mod:`~sance_core.engine.guards`, :mod:`~sance_core.engine.history`.

A model's stage keeps its network, its optimizer (parameter groups), its data and its step function.
"""

from sance_core.engine.checkpoint import (
    CHECKPOINT_FILE,
    RUNTIME_KEYS,
    CheckpointManager,
    CheckpointPolicy,
    fingerprint,
    input_fingerprint,
)
from sance_core.engine.guards import NonFiniteLossError, check_finite, non_finite_tensors
from sance_core.engine.history import History
from sance_core.engine.loop import (
    EpochEnd,
    LoopConfig,
    Resume,
    StepContext,
    StepResult,
    clear_resume,
    fit,
    training_outputs_dir,
    write_training_outputs,
)
from sance_core.engine.sampler import EpochBatches, sample_seed
from sance_core.engine.schedule import poly_lr, set_poly_lr, warmup_steps_of

__all__ = [
    "CHECKPOINT_FILE", "RUNTIME_KEYS", "CheckpointManager", "CheckpointPolicy", "EpochBatches", "EpochEnd",
    "History", "LoopConfig", "NonFiniteLossError", "Resume", "StepContext", "StepResult", "check_finite",
    "clear_resume", "fingerprint", "fit", "input_fingerprint", "non_finite_tensors", "poly_lr", "sample_seed", "set_poly_lr",
    "warmup_steps_of",
    "training_outputs_dir", "write_training_outputs",
]
