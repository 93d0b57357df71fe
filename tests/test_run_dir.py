"""run_dir.py: the run lock, and opening a run directory."""
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from vitcifar.config.config_file import to_json
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.errors import UsageError
from vitcifar.runs import run_dir

# --- the lock ------------------------------------------------------------------------------

def test_a_second_lock_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    folder = str(tmp_path / "run")
    with run_dir.RunLock(folder):
        with pytest.raises(UsageError, match=rf"run is being trained by process "
                                             rf"{os.getpid()} \(it holds .*training.lock\)"):
            run_dir.RunLock(folder).acquire()
    with run_dir.RunLock(folder):              # released: it can be taken again
        pass
    with pytest.raises(UsageError, match="is a file; pass a folder"):
        run_dir.RunLock(str(tmp_path / "run" / "training.lock")).acquire()


@pytest.mark.slow
def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; "
         "from vitcifar.runs import run_dir; run_dir.RunLock(sys.argv[1]).acquire(); print('held', flush=True); "
         "time.sleep(300)", folder], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"process {holder.pid} "):
            run_dir.RunLock(folder).acquire()
    finally:
        holder.kill()                                   # SIGKILL: no clean-up runs
        holder.wait()
    deadline = time.time() + 10
    lock = run_dir.RunLock(folder)
    while True:
        try:
            lock.acquire()
            break
        except UsageError:
            assert time.time() < deadline
            time.sleep(0.05)
    lock.release()


# --- opening a run -------------------------------------------------------------------------

def test_opening_a_file_as_a_run_directory_says_it_is_a_file(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_json(PRESETS["tiny"], RunOptions())))
    (folder / "best.weights.npz").write_bytes(b"")
    with pytest.raises(UsageError, match=r"best.weights.npz is a file, not a run directory: "
                                         r"pass the folder .*; its folder .*run is one"):
        run_dir.open_run(str(folder / "best.weights.npz"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match=r"notes.txt is a file, not a run directory: pass the "
                                         r"folder that train_cifar10.py wrote \(runs/...\)$"):
        run_dir.open_run(str(tmp_path / "notes.txt"))
