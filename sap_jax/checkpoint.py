"""Saving and loading trained variables with human-readable metadata.

A checkpoint is a directory::

  <path>/
    metadata.json   format tag, the caller's metadata (dataset, noise spec,
                    seed, model name and kwargs, train config, metrics), the
                    shape/dtype of every array and a checksum of every array
    variables/      the variables tree, written by orbax-checkpoint

Loading needs no model object: the raw tree is restored (arrays saved from
numpy come back as numpy, jax arrays as jax arrays, with identical values
and dtypes), or, with ``sharding=``, every array is read straight into the
sharding asked for. Writes follow the overwrite rule of :mod:`sap_jax.safe_write`:
nothing existing is touched without ``overwrite``; with it only an existing
sap_jax checkpoint (recognised by the format tag of its ``metadata.json``) is
replaced, never a ``protect``-ed path (the input of a correction), anything
inside it or containing it. The checkpoint is written into a temporary sibling
``.<name>.sap_jax-tmp-<pid>-<hex>`` and renamed into place, so an interrupted
save never leaves a half-written checkpoint at ``path``; its leftover is
removed at the next save to that place.

Integrity: at save, ``metadata.json`` records under ``"checksums"`` one checksum
per array, keyed by the same path strings as ``"arrays"``: in one process the
SHA-256 of the array's dtype, shape and bytes in C order (``"sha256:…"``); with
several processes `sap_jax.provenance.global_digest` (``"sum128:…"``), which is
computed where the shards are, without gathering an array, and does not depend
on the sharding. At load the restored arrays are digested again and any
difference raises :class:`DamagedCheckpoint` before anything is returned; read
errors from orbax are raised as :class:`DamagedCheckpoint` too. Checkpoints
written before checksums were added have no ``"checksums"`` entry; they load as
before, with only the shape/dtype check. The run's recipe in the metadata (the `SEALED`
entries: ``spec``, the seed, noise and split sizes that re-derive the noisy labels and
the splits, and ``labels``, the fingerprint of the noisy labels trained on) is sealed
field by field under ``"sealed"`` (`seal`): a field edited after the save makes the
checkpoint damaged, naming the field. Checkpoints saved before seals existed load
unchecked.

Many processes (`jax.distributed`): call `save_checkpoint` and `load_checkpoint`
on every process, with the same path and arguments, on a file system that every
process sees (orbax's multi-process rule). Global arrays may be sharded any way
(replicated parameters, a leaf split over a ``"model"`` or ``"data"`` axis).

* save: each process writes the shards it holds (orbax); numpy leaves and
  arrays held by one process are written from process 0's copy. Process 0 alone
  checks the target, cleans stale temporaries, names and creates the temporary
  folder, writes ``metadata.json`` (its ``metadata``) and swaps the folder in;
  every other process waits for its verdict, so a refusal is raised on every
  process with the same message, and no process returns before the checkpoint
  is complete. The processes are checked to pass the same path, options and
  array shapes first (`sap_jax.multihost.check_same_across_processes`).
* load: ``sharding=`` (a `jax.sharding.Sharding`, or a dict of them mirroring
  the variables) is the target; each process reads only its part. Without it,
  arrays come back replicated on every device (several processes) or as saved
  (one process; a checkpoint saved on other devices comes back on the default
  device). A damaged checkpoint is refused on every process, also when only one
  process read the damaged bytes. A checkpoint saved by one process loads on
  many and the other way round.

This module is the public face: the record format lives in `sap_jax.checkpoint_format`,
writing in `sap_jax.checkpoint_save`, reading in `sap_jax.checkpoint_load`.
"""

from sap_jax.checkpoint_format import (
  FORMAT,
  KIND,
  METADATA_FILE,
  SEALED,
  VARIABLES_DIR,
  DamagedCheckpoint,
  is_checkpoint,
  seal,
)
from sap_jax.checkpoint_load import TargetSharding, load_checkpoint
from sap_jax.checkpoint_save import save_checkpoint

__all__ = [
  "FORMAT",
  "KIND",
  "METADATA_FILE",
  "VARIABLES_DIR",
  "DamagedCheckpoint",
  "TargetSharding",
  "SEALED",
  "is_checkpoint",
  "load_checkpoint",
  "save_checkpoint",
  "seal",
]
