"""The multi-worker side of a run: the chief's starting point shared with every worker, and
what a lost worker raises and says."""
from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from vitcifar.config.config_file import from_json, to_json
from vitcifar.config.settings import RunOptions, TrainConfig
from vitcifar.config.views import flat, listed_differences
from vitcifar.errors import RunStopped, UsageError, first_line
from vitcifar.runs import run_dir
from vitcifar.runs.checkpoint import RunState
from vitcifar.training import distribution

# What a collective op raises when another worker died or hung: the coordination service's
# heartbeats abort collectives with UnavailableError; the others are what an abort, a
# timeout or a restarted peer give.
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                      tf.errors.CancelledError, tf.errors.AbortedError,
                      tf.errors.FailedPreconditionError)


def lost_worker(config: TrainConfig, options: RunOptions, state: RunState,
                plan: "distribution.Plan", error: Exception) -> RunStopped:
    kept = (f"{state.epochs_done} epoch(s) are saved in {options.output_dir}" if plan.chief
            else "the chief keeps the last saved epoch")
    return RunStopped(f"training stopped: a worker of the cluster died or stopped responding "
                      f"({type(error).__name__}: {tensorflow_cause(error)}); {kept}; rerun "
                      "every worker's command (the same flags and TF_CONFIG) to resume")


def tensorflow_cause(error: Exception) -> str:
    """The line of a TensorFlow op error that says what happened ("Collective ops is aborted
    by: ..."): its message follows a 'Graph execution error:' header, the Python frames
    where the op was defined (indented) and, on TF 2.10, a 'Node:' line."""
    message = getattr(error, "message", str(error))
    headers = ("Graph execution error", "Detected at node", "Node:")
    lines = [line for line in message.splitlines() if line.strip() and not line[0].isspace()
             and not line.startswith(headers)]
    # eager ops prefix the op's name: "{{function_node __wrapped__CollectiveBcastSend...}} "
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[0].strip()) if lines \
        else first_line(error)


def share_start(plan: "distribution.Plan", config: TrainConfig,
                saved: "TrainConfig | None", output_dir: str) -> "TrainConfig | None":
    """On several workers, the chief's starting point for all: every other worker checks that
    it was given the chief's experiment (UsageError naming the differences otherwise), and
    gets the experiment the chief resumes (None for a fresh run) and its checkpoint, written
    into the worker's own output_dir. So all resume from the same epoch, weights and state,
    with no shared disk. One worker: `saved` as given."""
    if plan.workers == 1:
        return saved
    if plan.chief:
        distribution.broadcast_bytes(plan, json.dumps(
            {"experiment": to_json(config, RunOptions()),
             "resumed": None if saved is None else to_json(saved, RunOptions())}).encode())
        if saved is not None:
            with open(os.path.join(output_dir, run_dir.CHECKPOINT), "rb") as handle:
                distribution.broadcast_bytes(plan, handle.read())
        return saved
    chief = json.loads(distribution.broadcast_bytes(plan, None))
    chiefs = flat(from_json(chief["experiment"], "the chief's config")[0])
    mine = flat(config)
    differences = listed_differences((name, mine[name], chiefs[name]) for name in mine
                                     if mine[name] != chiefs[name])
    if differences:
        raise UsageError(f"this worker was started with {differences} (the chief's); start "
                         "every worker with the same flags")
    if chief["resumed"] is None:
        return None
    contents = distribution.broadcast_bytes(plan, None)

    def write(path):
        with open(path, "wb") as handle:
            handle.write(contents)
    run_dir.atomic_save(os.path.join(output_dir, run_dir.CHECKPOINT), write)
    return from_json(chief["resumed"], "the chief's config")[0]
