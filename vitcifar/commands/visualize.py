"""`python visualize.py RUN_DIR [--data-dir DIR] [--patches IMAGE_INDEX]`: redraws every
figure of a finished or interrupted run directory from its config.json, best.weights.npz and
history.csv, with the test set read from where the run read it (or --data-dir)."""
from __future__ import annotations

from typing import List, Optional

from vitcifar.analysis.figures import PATCHES, plot_patches, write_run_figures
from vitcifar.config.flags import (Parser, add_backend_flag, add_saved_run_arguments,
                                   add_verbose_flag)
from vitcifar.errors import UsageError, entry_point
from vitcifar.runs import checkpoint, run_dir


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    """`python visualize.py RUN_DIR ...`; returns the exit code (2, with one `error:` line,
    for bad input)."""
    parser = Parser(
        prog="visualize.py",
        description="Draw the figures of a run directory into it: training curves, confusion "
                    "matrix, test predictions, attention maps, and a test image as patches.")
    add_saved_run_arguments(parser)
    parser.add_argument("--patches", type=int, default=0, metavar="IMAGE_INDEX",
                        help=f"test image drawn as patches into {PATCHES} (default: 0)")
    add_verbose_flag(parser)
    add_backend_flag(parser)
    args = parser.parse_args(argv)
    run = run_dir.open_run(args.run_dir)
    from vit_model import build_model
    from vitcifar.data import sources
    data = sources.load(run.config, run.data_dir(args.data_dir))
    if not 0 <= args.patches < len(data.x_test):
        raise UsageError(f"--patches {args.patches} is not a test image index; the test "
                         f"set has {len(data.x_test)} images (0..{len(data.x_test) - 1})")
    model = build_model(run.config)
    checkpoint.load_best_weights(run, model)
    write_run_figures(run.path, model, data.x_test, data.y_test, run.label_names)
    path = plot_patches(data.x_test[args.patches], run.config.patch_size,
                        run.config.patch_stride, run.file(PATCHES))
    print(f"Test image {args.patches} as patches: {path}")
    return 0
