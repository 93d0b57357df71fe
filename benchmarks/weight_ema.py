#!/usr/bin/env python3
"""Would an exponential moving average of the weights pay? Trains one run of the real
training path (train_cifar10.py's flags; `fast` and its 3-minute budget in the README's
figures) in this process while a callback keeps EMAs of all the weights at several momenta
after every step, then evaluates the last weights and each EMA on the whole test set.

    python -m benchmarks.weight_ema --preset fast --data-dir ARCHIVE --seed 0

After step t the average moves to decay * ema + (1 - decay) * weights with decay =
min(momentum, (1 + t) / (10 + t)), tf.train.ExponentialMovingAverage's rule with
num_updates, so that the first steps' random weights fade (it reaches 0.99 at step 890 and
0.995 at step 1,790). All the EMAs and the last weights come from the same
run, steps and seed: their test top-1 differ by the EMA alone, with no seed or timing noise
between them. The EMAs are kept in numpy outside the training step, which costs the run some
steps (printed); an EMA inside the step would cost less, so this measures what an EMA could
bring, not its price. The run's own results (best weights, results.json) are the app's; it
trains a new run, so an --output-dir that holds one needs --restart.
Fashion-MNIST packed as CIFAR-10 (benchmarks/time_to_accuracy.py) is the archive here.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np

from vitcifar.commands import train as train_command
from vitcifar.config import flags
from vitcifar.errors import UsageError, entry_point
from vitcifar.runs import run_dir

MOMENTA = (0.9, 0.97, 0.99, 0.995, 0.998)


def parse(argv):
    parser, group = flags.build_tool_parser(
        "weight_ema.py", "One training run with weight EMAs tracked after every step; the "
        "last weights and each EMA evaluated on the test set.")
    group.add_argument("--momenta", type=float, nargs="+", default=list(MOMENTA),
                       help=f"EMA momenta ({' '.join(map(str, MOMENTA))})")
    args = parser.parse_args(argv)
    if not all(0.0 < m < 1.0 for m in args.momenta):
        raise UsageError("--momenta must be between 0 and 1")
    args.momenta = list(dict.fromkeys(args.momenta))           # one average per momentum
    config, options = flags.configs_from_args("cifar10", args)
    if options.steps_per_execution != 1:      # the callback sees one call of N steps
        raise UsageError("weight_ema.py averages after every step: leave "
                         "--steps-per-execution at 1")
    if (options.output_dir and os.path.isfile(os.path.join(options.output_dir, run_dir.CONFIG))
            and not getattr(args, "restart", False)):
        raise UsageError(f"--output-dir {options.output_dir} holds a run and weight_ema.py "
                         "trains a new one: add --restart to start it over, or pick another "
                         "folder")
    return config, options, args


def ema_tracker(momenta: Sequence[float]):
    """A Keras callback (made once Keras is imported) keeping `ema[m]`, the EMA of
    model.get_weights() at each momentum m, after every training step, the `seconds` that
    took, and the `last` weights training ended with."""
    from vitcifar.backend.keras_compat import keras

    class EmaTracker(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps, self.seconds = 0, 0.0
            self.ema: Dict[float, List[np.ndarray]] = {}

        def on_train_batch_end(self, batch, logs=None):
            began = time.perf_counter()
            weights = [np.asarray(w, np.float32) for w in self.model.get_weights()]
            self.steps += 1
            decay = (1 + self.steps) / (10 + self.steps)
            for momentum in momenta:
                if momentum not in self.ema:
                    self.ema[momentum] = [w.copy() for w in weights]
                    continue
                d = min(momentum, decay)
                for average, w in zip(self.ema[momentum], weights):
                    average *= d
                    average += (1.0 - d) * w
            self.seconds += time.perf_counter() - began

        def on_train_end(self, logs=None):      # before the run loads its best weights
            self.last = [np.asarray(w, np.float32) for w in self.model.get_weights()]

    return EmaTracker()


@entry_point
def main(argv=None) -> int:
    from vitcifar.training.wall_clock import WallClock
    clock = WallClock()                            # the budget counts from here, as the app's
    config, options, args, device = train_command.start_tool(parse, argv)
    from vitcifar.data import cifar
    from vitcifar.training import distribution, trainer
    from vitcifar.training.compiled import evaluate_test, local_model

    tracker = ema_tracker(args.momenta)
    with tempfile.TemporaryDirectory() as scratch:
        if options.output_dir is None:
            options = dataclasses.replace(options, output_dir=scratch)
        data = cifar.load(config.dataset, options.data_dir)
        results = trainer.run(config, options, data, device, restart=True, clock=clock,
                              extra_callbacks=[tracker])
        # evaluated as the app evaluates its best weights: in float32 (a copy when the run
        # trained in mixed precision)
        model = local_model(distribution.single_device(), config, tracker.model)

        def top1(weights) -> float:           # the metric results.json's test_top1 is
            model.set_weights(weights)
            return evaluate_test(model, config, data.x_test, data.y_test,
                                 config.batch_size)["test_top1"]

        print(f"weight_ema: {tracker.steps} steps, seed {config.seed}, {results['images_seen']:,}"
              f" images seen; the EMAs took {tracker.seconds:.1f} s of the run")
        print(f"  last weights: test top-1 {top1(tracker.last):.2%} (the run's best weights: "
              f"{results['test_top1']:.2%})")
        for momentum, weights in tracker.ema.items():
            print(f"  EMA {momentum:g}: test top-1 {top1(weights):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
