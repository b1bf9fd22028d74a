"""``load_dataset`` specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.streams.datasets import Dataset, load_dataset
from freshrec.streams.datasets.mind import Mind
from freshrec.streams.datasets.movielens import MovieLens
from freshrec.streams.datasets.synthetic import SyntheticDataset


def test_synthetic_default_and_options():
    ds = load_dataset("synthetic")
    assert isinstance(ds, SyntheticDataset) and isinstance(ds, Dataset)
    assert ds.total == 1000 + 50_000
    small = load_dataset("synthetic:users=10,items=20,categories=2,events=100,seed=7")
    events = list(small)
    assert len(events) == small.total == 120
    assert events == list(load_dataset("synthetic: users=10, items=20, categories=2, events=100, seed=7"))
    assert load_dataset("synthetic:events=1_000,items=5").total == 1005


def test_synthetic_realtime_option():
    assert load_dataset("synthetic:realtime=1,events=10").kwargs["realtime"] is True


@pytest.mark.parametrize("spec,message", [
    ("nope", "unknown dataset"),
    ("parquet:/x", "unknown dataset"),
    ("synthetic:userz=5", "unknown synthetic option 'userz'"),
    ("synthetic:users=many", "expected an integer"),
    ("synthetic:users", "key=value"),
    ("movielens", "needs a path"),
    ("mind:", "needs a path"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(spec)


def test_missing_paths_fail_early(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_dataset(f"movielens:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError):
        load_dataset(f"mind:{tmp_path}")


def test_file_datasets(shared_datasets: Path):
    ml = load_dataset(f"movielens:{shared_datasets / 'movielens-100k'}")
    assert isinstance(ml, MovieLens) and len(ml) == 101_682
    mind = load_dataset(f"mind:{shared_datasets / 'mind-sample'}")
    assert isinstance(mind, Mind) and not mind.with_history and mind.total == 14_542
    assert load_dataset(f"mind+history:{shared_datasets / 'mind-sample'}").with_history


def test_len_of_unknown_size_raises_type_error():
    class Unknown(Dataset):
        def __iter__(self):
            return iter(())

    ds = Unknown()
    assert ds.total is None
    with pytest.raises(TypeError):
        len(ds)
