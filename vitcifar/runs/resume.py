"""Resuming a run: the settings to go on with (its config.json with the command line's flags
on top), the checks that it is the same experiment, the run folder made ready, the model
and run state restored from checkpoint.npz, and the command that resumes a stopped run.

The one module that joins the command line (flags.py) to the run folder (run_dir.py) and the
checkpoint (checkpoint.py). It imports no TensorFlow at import time: a run that cannot be
resumed is refused before TensorFlow's slow start-up.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from typing import Dict, Optional, Tuple

from vitcifar.config.config_file import to_json
from vitcifar.config.datasets import IMAGES
from vitcifar.config.flags import split_settings
from vitcifar.config.presets import PRESETS
from vitcifar.config.regularisation import noting_given, with_choice_of
from vitcifar.config.settings import RunOptions, TrainConfig
from vitcifar.config.views import differences_that_block_resume, listed_differences, override
from vitcifar.errors import UsageError
from vitcifar.runs import checkpoint, run_dir
from vitcifar.runs.checkpoint import RunState
from vitcifar.runs.run_dir import CHECKPOINT, CONFIG, read_config


def resume_settings(dataset: str, output_dir: Optional[str], given: Dict[str, object],
                    preset: Optional[str] = None) -> Optional[Tuple[TrainConfig, RunOptions]]:
    """The settings to go on with the run in `output_dir`: its config.json with the flags
    `given` (flat, as flags.given_settings returns) on top; None when the folder holds no
    config.json (a new run). The flags may change the resumable experiment settings
    (epochs, learning rate, patience, early stopping, validation images) and any run
    option; UsageError lists every other difference at once. `preset`, when given, is
    checked the same way (the run must be that preset, apart from the flags and the
    resumable settings) and changes nothing, so the command that started the run resumes
    it too."""
    if not output_dir or not os.path.isfile(os.path.join(output_dir, CONFIG)):
        return None
    saved, saved_options = read_config(output_dir)
    if saved.dataset != dataset:
        raise UsageError(f"{output_dir} holds a {saved.display_name} run; resume it with "
                         f"train_{saved.dataset}.py, or pick another --output-dir")
    experiment, run = split_settings(given)
    wanted = override(saved, **experiment)
    reference = wanted if preset is None else with_choice_of(saved, override(noting_given(
        dataclasses.replace(PRESETS[preset], dataset=dataset), experiment), **experiment))
    check_resumable(saved, reference, output_dir)
    if "data_dir" not in run and saved_options.data_dir and \
            not os.path.exists(saved_options.data_dir):
        raise UsageError(f"the run's data, --data-dir {saved_options.data_dir} (in "
                         f"{os.path.join(output_dir, CONFIG)}), is not there; pass --data-dir "
                         "with the folder or archive that holds them now")
    return (wanted.validate(),
            dataclasses.replace(saved_options, **{**run, "output_dir": output_dir}).validate())


def prepare_for_training(config: TrainConfig, options: RunOptions, restart: bool
                         ) -> Optional[TrainConfig]:
    """Creates or reopens options.output_dir and writes config.json; returns the experiment of
    the run being resumed, or None for a fresh run. Refuses (UsageError, listing every
    difference) to resume a run whose experiment differs beyond the resumable settings;
    a resumed run keeps what regularisation "auto" chose at its start (with_choice_of).
    The caller holds the folder's RunLock."""
    output_dir = options.output_dir
    run_dir.check_folder(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if restart:
        run_dir.remove_run_files(output_dir)
    saved = None
    if os.path.exists(os.path.join(output_dir, CHECKPOINT)) and \
            os.path.exists(os.path.join(output_dir, CONFIG)):
        saved, _ = read_config(output_dir, "; add --restart to start the run over")
        config = with_choice_of(saved, config)
        check_resumable(saved, config, output_dir)
    run_dir.atomic_write_json(os.path.join(output_dir, CONFIG), to_json(config, options))
    return saved


def check_resumable(saved: TrainConfig, wanted: TrainConfig, output_dir: str) -> None:
    if saved.dataset != wanted.dataset:
        raise UsageError(f"{output_dir} holds a {saved.display_name} run; resume it with "
                         f"train_{saved.dataset}.py, or pick another --output-dir")
    differences = differences_that_block_resume(saved, wanted)
    if differences:
        raise UsageError(f"{output_dir} holds a run with {listed_differences(differences)}; "
                         "leave those flags out to resume it with its own settings, add "
                         "--restart to start it over with yours, or pick another --output-dir")


def restore(model, config: TrainConfig, options: RunOptions, saved: TrainConfig) -> RunState:
    """Gives the compiled `model` and its optimizer the state of the run in
    options.output_dir (its checkpoint.npz) and returns the run state, with a new
    --learning-rate applied; rewrites best.weights.npz when a crash left it behind the
    checkpoint. `saved` is the experiment config.json held before this session."""
    saved_state = os.path.join(options.output_dir, CHECKPOINT)
    try:
        state = checkpoint.load_checkpoint(saved_state, model, model.optimizer)
    except checkpoint.WeightsError as error:
        raise UsageError(f"{error}; add --restart to start the run over") from None
    if config.learning_rate != saved.learning_rate:      # asked for anew, e.g. after a NaN
        state.learning_rate = config.learning_rate       # (cosine: the schedule's new peak)
        state.epochs_since_lr_change = 0
    if config.lr_schedule == "plateau":                  # a schedule's rate follows its step
        model.optimizer.learning_rate = state.learning_rate
    best_weights = os.path.join(options.output_dir, run_dir.BEST_WEIGHTS)
    if state.best_epoch == state.epochs_done and (
            not os.path.exists(best_weights)
            or os.path.getmtime(best_weights) < os.path.getmtime(saved_state)):
        # The last epoch was the best, and its weights file, written after the checkpoint,
        # is missing or older: a crash came in between. The checkpoint holds those weights.
        checkpoint.save_weights(model, best_weights)
    best = (f", best validation top-1 {state.best_val_top1:.2%} at epoch {state.best_epoch}"
            if state.best_epoch else "")
    epochs = state.plan.epochs if state.plan else config.epochs     # --time-budget's plan
    done = f"Resuming {options.output_dir}: {state.epochs_done} of {epochs} epochs done{best}"
    if state.epochs_done >= epochs or state.stopped_early:
        print(f"{done}; training is complete, evaluating the best weights")
    else:
        print(f"{done}; continuing at epoch {state.epochs_done + 1} with learning rate "
              f"{state.learning_rate:g}")
    return state


def resume_command(config: TrainConfig, options: RunOptions) -> str:
    """The command that resumes the run, to paste into this shell from this folder: the run
    directory holds every setting. `python` when that is this interpreter on the PATH (an
    activated environment), else this interpreter's full path."""
    app = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(app, f"train_{config.dataset}.py")     # the root's commands
    try:
        relative = os.path.relpath(script)
    except ValueError:                     # Windows: the script is on another drive
        relative = os.pardir
    if not relative.startswith(os.pardir):  # the app's folder or below it: short and exact
        script = relative
    on_path = shutil.which("python")
    python = "python" if on_path and os.path.normcase(os.path.abspath(on_path)) == \
        os.path.normcase(os.path.abspath(sys.executable)) else sys.executable
    quote = subprocess.list2cmdline if os.name == "nt" else shlex.join
    folder = [options.data_dir] if config.dataset == IMAGES else []    # train_images.py DIR
    return quote([python, script, *folder, "--output-dir", options.output_dir])
