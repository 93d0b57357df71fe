"""Re-evaluate a run's saved model on the test set.

    python evaluate.py RUN_DIR [--data-dir DIR] [--batch-size N]

prints test top-1 / top-5 / loss of best.weights.npz and compares them with the run's
results.json (the same evaluation the run did at its end, so they should agree; a different
--data-dir can change them).
"""
from __future__ import annotations

from typing import List, Optional

from vitcifar.config.flags import (Parser, add_backend_flag, add_saved_run_arguments,
                                   add_verbose_flag)
from vitcifar.errors import UsageError, entry_point
from vitcifar.runs import checkpoint, run_dir

METRICS = ("test_top1", "test_top5", "test_loss")


def evaluate_run(run, x_test, y_test, batch_size: int) -> dict:
    """{test_top1, test_top5, test_loss} of the run's best weights, computed as a training run
    computes them (compiled.evaluate_test)."""
    from vit_model import build_model
    from vitcifar.training import compiled
    model = build_model(run.config)
    checkpoint.load_best_weights(run, model)
    compiled.compile_model(model, run.config)
    return compiled.evaluate_test(model, run.config, x_test, y_test, batch_size)


def comparison(measured: dict, stored: Optional[dict]) -> str:
    """One line saying whether `measured` matches results.json's numbers."""
    if stored is None:
        return "results.json: none (the run ended before its test evaluation)"
    differences = {key: measured[key] - stored[key] for key in METRICS if key in stored}
    if all(abs(value) < 5e-5 for value in differences.values()):
        return "results.json: the same"
    return "results.json differs: " + ", ".join(
        f"{key} {stored[key]:.4f} there, {measured[key]:.4f} now" for key in differences
        if abs(differences[key]) >= 5e-5)


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    """Returns the exit code: 0, or 2 with one `error:` line for bad input."""
    parser = Parser(prog="evaluate.py",
                    description="Evaluate a run's best weights on the test set again.")
    add_saved_run_arguments(parser)
    parser.add_argument("--batch-size", type=int,
                        help="images per step (default: the run's batch size)")
    add_verbose_flag(parser)
    add_backend_flag(parser)
    args = parser.parse_args(argv)
    run = run_dir.open_run(args.run_dir)
    batch_size = run.config.batch_size if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, got {batch_size}")
    from vitcifar.data import sources
    data = sources.load(run.config, run.data_dir(args.data_dir))
    x_test, y_test = data.x_test, data.y_test
    measured = evaluate_run(run, x_test, y_test, batch_size)
    print(f"{run.config.display_name} test set, {len(x_test):,} images: top-1 "
          f"{measured['test_top1']:.2%}, top-5 {measured['test_top5']:.2%}, loss "
          f"{measured['test_loss']:.4f}")
    print(comparison(measured, run.results()))
    return 0
