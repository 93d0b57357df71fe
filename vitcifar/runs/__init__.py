"""A run's folder and what makes it survive a crash.

    run_dir     file names, atomic writes, history.csv, config.json, the lock, opening a run
    checkpoint  weights and optimizer state in .npz keyed by weight path, the run state
    resume      settings from config.json and flags, restoring, the resume command
    folder_run  a folder of your own images as a run's data: read before TensorFlow starts
    init_from   --init-from RUN_DIR: another run's weights as a new run's start
    time_budget the --time-budget plan a run keeps, from measured step times (arithmetic)

May import: vitcifar.errors, vitcifar.config, vitcifar.backend, vitcifar.data.
"""
