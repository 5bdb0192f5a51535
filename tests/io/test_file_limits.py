"""One size cap for every file a user hands qcal, defined once (qcal.io.safe_load.MAX_FILE_BYTES)."""

import inspect
from pathlib import Path

import pytest
import torch

from qcal.checkpoint.explain import explain
from qcal.io.safe_load import MAX_FILE_BYTES, load_checkpoint
from qcal.io.tensor_files import load_tensors
from qcal.io.user_models import load_user_model

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("loader", [load_checkpoint, explain, load_tensors, load_user_model])
def test_every_loader_defaults_to_the_one_cap(loader):
    assert inspect.signature(loader).parameters["max_bytes"].default == MAX_FILE_BYTES


def test_user_model_weights_over_the_cap_are_refused_before_loading(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(64, 64).state_dict(), path)
    with pytest.raises(ValueError, match=r"w\.pt is .* above the limit of 100 bytes"):
        load_user_model("torch.nn:Identity", path, max_bytes=100)


def test_readme_gives_the_cap_the_code_uses():
    assert f"{MAX_FILE_BYTES // 2**20} MiB" in README.read_text()
