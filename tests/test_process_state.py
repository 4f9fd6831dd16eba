"""pfpld library calls leave process-wide settings (plotting backend, thread counts, warning filters) as they
found them: a notebook or a test that calls them keeps its own."""
import warnings

import cv2
import matplotlib
import numpy as np
import torch

from pfpld.plots import plot_training_curves


def test_training_curves_keep_the_callers_matplotlib_backend(tmp_path):
    history = [{"epoch": i, "train_loss": 1 / i, "train_landmark_loss": 0.5 / i, "val_nme": 0.1 / i,
                "val_pose_mae_deg": float("nan")} for i in range(1, 4)]
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        threads, cv_threads, filters = torch.get_num_threads(), cv2.getNumThreads(), list(warnings.filters)
        plot_training_curves(history, tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg"
        assert (torch.get_num_threads(), cv2.getNumThreads(), warnings.filters) == (threads, cv_threads, filters)
    finally:
        matplotlib.use(before)
    image = cv2.imread(str(tmp_path / "curves.png"))
    assert image is not None and image.shape[2] == 3 and np.ptp(image) > 0
