"""resume.py: resuming from a folder's config.json with the flags on top, and its checks."""
import dataclasses
import json
import os

import pytest

from vitcifar.config.config_file import to_json
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.config.views import override
from vitcifar.errors import UsageError
from vitcifar.runs import resume, run_dir


@pytest.fixture
def saved_run(tmp_path):
    """A folder whose config.json holds a tiny run with --batch-size 32 on an archive."""
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"")
    folder = tmp_path / "run"
    folder.mkdir()
    config = override(PRESETS["tiny"], batch_size=32, epochs=2)
    options = RunOptions(data_dir=str(archive), output_dir=str(folder), tensorboard=False)
    (folder / "config.json").write_text(json.dumps(to_json(config, options)))
    return str(folder), config, options


def test_a_folder_with_config_json_resumes_with_its_settings_and_the_flags_on_top(saved_run):
    folder, config, options = saved_run
    assert resume.resume_settings("cifar10", folder, {}) == (config, options)
    resumed, resumed_options = resume.resume_settings(
        "cifar10", folder, {"epochs": 5, "learning_rate": 1e-4, "gpu": "1", "xla": "off"})
    assert resumed == dataclasses.replace(config, epochs=5, learning_rate=1e-4)
    assert resumed_options == dataclasses.replace(options, gpu="1", xla="off")
    # the preset that made it, with the same flags, is accepted and changes nothing
    assert resume.resume_settings("cifar10", folder, {"batch_size": 32}, "tiny") == \
        (config, options)
    assert resume.resume_settings("cifar10", os.path.dirname(folder), {}) is None
    assert resume.resume_settings("cifar10", None, {}) is None


def test_changes_that_would_make_another_run_are_listed_all_at_once(saved_run):
    folder, _, _ = saved_run
    before = open(os.path.join(folder, "config.json")).read()
    with pytest.raises(UsageError, match=r"holds a run with --patch-size 8, not 16, "
                                         r"--num-layers 2, not 3, --flip True, not False; "
                                         r"leave those flags out .* --restart"):
        resume.resume_settings("cifar10", folder, {"num_layers": 3, "patch_size": 16,
                                                    "flip": False, "epochs": 9})
    with pytest.raises(UsageError, match=r"--batch-size 32, not 128"):
        resume.resume_settings("cifar10", folder, {}, "tiny")           # tiny's own 128
    with pytest.raises(UsageError, match="holds a CIFAR-10 run; resume it with "
                                         "train_cifar10.py"):
        resume.resume_settings("cifar100", folder, {})
    assert open(os.path.join(folder, "config.json")).read() == before


def test_data_that_moved_and_a_config_json_of_another_version_are_one_line(saved_run):
    folder, _, options = saved_run
    os.remove(options.data_dir)
    with pytest.raises(UsageError, match=r"the run's data, --data-dir .*data.tar.gz \(in "
                                         r".*config.json\), is not there; pass --data-dir"):
        resume.resume_settings("cifar10", folder, {})
    assert resume.resume_settings("cifar10", folder, {"data_dir": "elsewhere"})[1].data_dir \
        == "elsewhere"
    run = run_dir.SavedRun(folder, *run_dir.read_config(folder), [])
    with pytest.raises(UsageError, match=r"the run read its data from .*data.tar.gz \(its "
                                         r"config.json\), which is not there now; pass "
                                         r"--data-dir"):
        run.data_dir(None)
    assert run.data_dir("mine") == "mine"
    values = json.load(open(os.path.join(folder, "config.json")))
    values["experiment"]["warp"] = 9
    json.dump(values, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(UsageError, match="config.json has unknown keys warp"):
        resume.resume_settings("cifar10", folder, {"data_dir": "elsewhere"})


def test_a_fast_run_saved_before_validation_images_resumes_with_the_command_that_started_it(
        tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    saved = override(PRESETS["fast"], validation_images=0)       # what such runs did
    values = to_json(saved, RunOptions(output_dir=str(folder)))
    del values["experiment"]["validation_images"]                # written before the field
    (folder / "config.json").write_text(json.dumps(values))
    resumed, _ = resume.resume_settings("cifar10", str(folder), {}, "fast")
    assert resumed.validation_images == 0 and PRESETS["fast"].validation_images == 3000
    # given as a flag, it applies to the rest of the run
    resumed, _ = resume.resume_settings("cifar10", str(folder), {"validation_images": 500},
                                        "fast")
    assert resumed.validation_images == 500
