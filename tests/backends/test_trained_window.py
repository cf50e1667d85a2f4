"""The trained-window file of a model folder: written by training, read by the node and the CLI."""
import json

import pytest

from molmo2_ros.backends.trained_window import (WINDOW_FILE, TrainedWindow, read_trained_window,
                                                 write_trained_window)


def test_round_trip_and_seconds(tmp_path):
    write_trained_window(tmp_path, TrainedWindow(2.0, 16))
    window = read_trained_window(tmp_path)
    assert window == TrainedWindow(2.0, 16) and window.window_seconds == 8.0
    assert "16 frames at 2 fps (8 s)" == window.describe()


def test_a_folder_that_states_nothing_has_no_window(tmp_path):
    assert read_trained_window(tmp_path) is None
    assert read_trained_window("allenai/Molmo2-4B") is None


@pytest.mark.parametrize("content", ["not json", json.dumps({"fps": 2.0}), json.dumps({"fps": 0, "max_frames": 4}),
                                     json.dumps({"fps": "nan", "max_frames": 4}),
                                     json.dumps({"fps": 2.0, "max_frames": 2.5})])
def test_a_malformed_file_is_a_clear_error(tmp_path, content):
    (tmp_path / WINDOW_FILE).write_text(content)
    with pytest.raises(ValueError, match=WINDOW_FILE):
        read_trained_window(tmp_path)
