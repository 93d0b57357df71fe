"""preview_augmentations.py: a PNG grid of real training images and augmented copies."""
import pytest

from helpers import run_app


@pytest.mark.slow
def test_preview_saves_a_png_of_training_images(tmp_path, cifar10_tar):
    path = tmp_path / "preview.png"
    result = run_app("preview_augmentations.py", path, "--data-dir", cifar10_tar,
                     "--rows", 2, "--versions", 3, "--mixup-alpha", 0.3)
    assert result.returncode == 0, result.stderr[-2000:]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    result = run_app("preview_augmentations.py", path, "--randaugment-n", 99)
    assert result.returncode == 2 and "--randaugment-n must be 0 to 8" in result.stderr

