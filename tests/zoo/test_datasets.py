"""qcal.zoo.datasets: digits splits, batching, fingerprints and safe loading of users' tensor files."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from qcal.zoo.datasets import (
    DIGITS_SPLIT_SIZES,
    batches,
    calib_batches,
    digits_splits,
    fingerprint,
    load_tensors,
)

# ---------------------------------------------------------------- digits


def test_digits_splits_have_fixed_sizes_dtypes_and_unit_range():
    s = digits_splits()
    for (x, y), n in zip((s.train, s.calib, s.test), DIGITS_SPLIT_SIZES, strict=True):
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
        assert set(y.tolist()) == set(range(10))
    assert sum(DIGITS_SPLIT_SIZES) == 1797


def test_digits_splits_are_deterministic_and_seed_dependent():
    a, b, c = digits_splits(0), digits_splits(0), digits_splits(1)
    assert fingerprint(*a.train, *a.calib, *a.test) == fingerprint(*b.train, *b.calib, *b.test)
    assert fingerprint(*a.test) != fingerprint(*c.test)


def test_digits_splits_partition_all_images():
    s = digits_splits()
    x = torch.cat([s.train[0], s.calib[0], s.test[0]]).flatten(1)
    y = torch.cat([s.train[1], s.calib[1], s.test[1]])
    from sklearn.datasets import load_digits

    ref = load_digits()
    order = torch.from_numpy(np.lexsort(ref.data.T[::-1]))
    mine = np.lexsort((x.numpy() * 16).round().T[::-1])
    assert torch.equal(torch.from_numpy(ref.data[order.numpy()]).float(), (x[mine] * 16).round())
    assert sorted(y.tolist()) == sorted(ref.target.tolist())


def test_digits_splits_returns_fresh_tensors():
    a = digits_splits()
    a.train[0].zero_()
    assert float(digits_splits().train[0].max()) == 1.0


# ---------------------------------------------------------------- batching, fingerprint


def test_batches_cover_the_data_in_order_with_a_short_last_batch():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    out = batches(x, y, batch_size=4)
    assert [len(b[0]) for b in out] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in out]), y)
    assert all(b[1] is None for b in batches(x, batch_size=3))


def test_batches_reject_mismatched_labels_and_bad_batch_size():
    with pytest.raises(ValueError, match="9 rows but inputs have 10"):
        batches(torch.zeros(10, 2), torch.zeros(9))
    with pytest.raises(ValueError, match="positive integer"):
        calib_batches(torch.zeros(3), batch_size=0)


def test_calib_batches_caps_the_number_of_batches():
    out = calib_batches(torch.zeros(100, 3), batch_size=16, max_batches=2)
    assert [b.shape for b in out] == [(16, 3), (16, 3)]


def test_fingerprint_depends_on_values_dtype_shape_and_absent_labels():
    x = torch.arange(6.0)
    assert fingerprint(x) == fingerprint(x.clone())
    assert len(fingerprint(x)) == 16
    variants = {fingerprint(x), fingerprint(x.double()), fingerprint(x.view(2, 3)),
                fingerprint(x + 1), fingerprint(x, None)}
    assert len(variants) == 5
    assert fingerprint(x.view(2, 3).t()) == fingerprint(x.view(2, 3).t().contiguous())


# ---------------------------------------------------------------- load_tensors round trips

X = torch.randn(12, 1, 8, 8)
Y = torch.arange(12) % 10


@pytest.mark.parametrize(
    "content",
    [{"inputs": X, "labels": Y}, {"x": X, "y": Y}, {"data": X, "targets": Y}, (X, Y), [X, Y]],
    ids=["inputs-labels", "x-y", "data-targets", "tuple", "list"],
)
def test_pt_file_round_trips_inputs_and_labels(tmp_path, content):
    path = tmp_path / "data.pt"
    torch.save(content, path)
    x, y = load_tensors(path)
    assert torch.equal(x, X) and torch.equal(y, Y)


def test_pt_file_with_a_bare_tensor_has_no_labels(tmp_path):
    torch.save(X, tmp_path / "x.pth")
    x, y = load_tensors(tmp_path / "x.pth")
    assert torch.equal(x, X) and y is None


def test_npz_round_trips_and_float64_becomes_float32(tmp_path):
    np.savez(tmp_path / "d.npz", x=X.double().numpy(), y=Y.numpy().astype(np.int32))
    x, y = load_tensors(tmp_path / "d.npz")
    assert x.dtype == torch.float32 and torch.equal(x, X)
    assert y.dtype == torch.int64 and torch.equal(y, Y)


def test_npz_with_unnamed_arrays_and_npy_are_accepted(tmp_path):
    np.savez(tmp_path / "a.npz", X.numpy(), Y.numpy())
    x, y = load_tensors(tmp_path / "a.npz")
    assert torch.equal(x, X) and torch.equal(y, Y)
    np.save(tmp_path / "b.npy", X.numpy())
    x, y = load_tensors(tmp_path / "b.npy")
    assert torch.equal(x, X) and y is None


def test_safetensors_round_trips(tmp_path):
    save_file({"inputs": X, "labels": Y}, str(tmp_path / "d.safetensors"))
    x, y = load_tensors(tmp_path / "d.safetensors")
    assert torch.equal(x, X) and torch.equal(y, Y)


# ---------------------------------------------------------------- load_tensors refusals


class _Payload:
    """Unpickling this (with weights_only=False) would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"inputs": X, "labels": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.pt: refused to load.*never unpickles"):
        load_tensors(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live: full unpickling runs it
    assert marker.exists()


def test_npz_object_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays"):
        load_tensors(tmp_path / "o.npz")


def test_files_over_the_size_limit_are_refused(tmp_path):
    torch.save(X, tmp_path / "big.pt")
    with pytest.raises(ValueError, match=r"big\.pt: .* larger than the limit of 1,000 bytes"):
        load_tensors(tmp_path / "big.pt", max_bytes=1000)


def test_compressed_npz_is_limited_by_its_expanded_size(tmp_path):
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros(1_000_000))
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000
    with pytest.raises(ValueError, match="expands to 8,000,"):
        load_tensors(tmp_path / "bomb.npz", max_bytes=1_000_000)


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".safetensors"])
def test_truncated_files_are_reported_as_corrupt(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".pt":
        torch.save({"inputs": X}, path)
    elif suffix == ".npz":
        np.savez(path, x=X.numpy())
    else:
        save_file({"inputs": X}, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"d\{suffix}: truncated or corrupt"):
        load_tensors(path)


def test_unknown_extension_and_missing_file_are_named(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"d\.csv: unknown extension '\.csv'; accepted: \.pt"):
        load_tensors(tmp_path / "d.csv")
    with pytest.raises(ValueError, match="no such file"):
        load_tensors(tmp_path / "nope.pt")


def test_dict_without_an_inputs_key_lists_its_keys_and_the_accepted_ones(tmp_path):
    torch.save({"foo": X, "bar": Y}, tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"no inputs key among \['foo', 'bar'\]; accepted: .*inputs/input/x"):
        load_tensors(tmp_path / "d.pt")


def test_label_count_must_match_inputs(tmp_path):
    torch.save({"inputs": X, "labels": Y[:5]}, tmp_path / "d.pt")
    with pytest.raises(ValueError, match="5 labels for 12 inputs"):
        load_tensors(tmp_path / "d.pt")


def test_pt_archive_is_a_zip_so_expansion_is_checked_too(tmp_path):
    torch.save(X, tmp_path / "x.pt")
    assert zipfile.is_zipfile(tmp_path / "x.pt")
    assert load_tensors(tmp_path / "x.pt", max_bytes=10_000)[0].shape == X.shape
