"""``freshrec eval`` end to end on tiny data sets: tables printed, results.md/json/png written."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from freshrec.cli import main
from freshrec.evaluation.cli import auto_sample_every

PNG = b"\x89PNG\r\n\x1a\n"


def run(args: list[str]):
    result = CliRunner().invoke(main, ["eval", *args, "--no-progress"], catch_exceptions=False)
    return result


def write_ratings(path: Path, fmt: str, n: int = 600, users: int = 25, items: int = 40, seed: int = 0) -> None:
    """A small MovieLens-format file with a popularity skew and some taste structure."""
    rng = random.Random(seed)
    t = 880_000_000
    rows = []
    done = set()
    while len(rows) < n:
        u = rng.randrange(1, users + 1)
        i = (u % 4) * 10 + rng.choice([1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) if rng.random() < 0.7 else rng.randrange(1, items + 1)
        if (u, i) in done:
            continue
        done.add((u, i))
        t += rng.randrange(1, 600)
        rows.append((u, i, rng.randint(1, 5), t))
    if fmt == "udata":
        path.joinpath("u.data").write_text("".join(f"{u}\t{i}\t{r}\t{ts}\n" for u, i, r, ts in rows))
        genres = ["Action", "Comedy", "Drama", "Horror"]
        path.joinpath("u.item").write_text("".join(
            f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|0|" + "|".join("1" if g == (i - 1) // 10 else "0" for g in range(18))
            + "\n" for i in range(1, items + 1)), encoding="latin-1")
        path.joinpath("u.genre").write_text("unknown|0\n" + "".join(f"{g}|{k + 1}\n" for k, g in enumerate(
            genres + [f"G{x}" for x in range(14)])))
    else:
        path.joinpath("ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
            f"{u},{i},{r}.0,{ts}\n" for u, i, r, ts in rows))
        path.joinpath("movies.csv").write_text("movieId,title,genres\n" + "".join(
            f"{i},Movie {i} (1999),{['Action', 'Comedy', 'Drama', 'Horror'][(i - 1) // 10]}|Thriller\n"
            for i in range(1, items + 1)))


def test_eval_on_movielens_writes_md_json_png(tmp_path: Path):
    data = tmp_path / "ml"
    data.mkdir()
    write_ratings(data, "udata")
    out = tmp_path / "out"
    res = run(["--dataset", f"movielens:{data}", "--methods",
               "freshrec:refresh_every=100,popularity,covis20,funkmf,rtrec:batch_size=100",
               "--out", str(out), "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "| method | HitRate@10 | NDCG@10 | MRR@10 | coverage | ILD | novelty | tests | seconds |" in res.output
    md = (out / "results.md").read_text()
    doc = orjson.loads((out / "results.json").read_bytes())
    assert (out / "hitrate.png").read_bytes()[:8] == PNG
    names = [m["method"] for m in doc["methods"]]
    assert names == ["freshrec(refresh_every=100)", "popularity", "covis20", "funkmf", "rtrec(batch_size=100)"]
    assert doc["stream"]["tests"] == doc["stream"]["positives"] == 600  # every rating tested
    for m in doc["methods"]:
        assert m["tests"] == 600 and 0 <= m["hit_rate@10"] <= 1 and m["violations"] == 0
        assert m["ild"] is not None and m["novelty"] > 0
        assert "auc" not in m  # no impressions in MovieLens
        assert f"| {m['method']} |" in md
    assert doc["sample_every"] == 1 and "auto" in doc["sample_every_source"]


def test_eval_on_ratings_csv_unchanged(tmp_path: Path):
    data = tmp_path / "ml-latest"
    data.mkdir()
    write_ratings(data, "csv")
    out = tmp_path / "out"
    res = run(["--dataset", f"movielens:{data / 'ratings.csv'}", "--methods", "popularity,covis20",
               "--out", str(out), "--sample-every", "7"])
    assert res.exit_code == 0, res.output
    doc = orjson.loads((out / "results.json").read_bytes())
    assert doc["stream"]["tests"] == 86 and doc["sample_every_source"] == "given"  # ceil(600 / 7)
    assert all(m["ild"] is not None for m in doc["methods"])  # genres from movies.csv


MIND_NEWS = "".join(f"N{i}\t{['sports', 'news', 'finance'][i % 3]}\tsub{i % 5}\tTitle {i}\tAbstract\thttp://x\t[]\t[]\n"
                    for i in range(30))


def write_mind(path: Path, rows: int = 120, seed: int = 1) -> None:
    rng = random.Random(seed)
    lines = []
    for r in range(rows):
        user = f"U{rng.randrange(15)}"
        slate = rng.sample(range(30), 6)
        labels = ["1" if (s % 3 == int(user[1:]) % 3 and rng.random() < 0.5) or rng.random() < 0.05 else "0"
                  for s in slate]
        minute, hour = r % 60, 9 + r // 60
        lines.append(f"{r}\t{user}\t11/1{1 + r // 50}/2019 {hour}:{minute:02d}:00 AM\t\t"
                     + " ".join(f"N{s}-{lab}" for s, lab in zip(slate, labels)) + "\n")
    (path / "behaviors.tsv").write_text("".join(lines))
    (path / "news.tsv").write_text(MIND_NEWS)


def test_eval_on_mind_reports_click_prediction(tmp_path: Path):
    data = tmp_path / "mind"
    data.mkdir()
    write_mind(data)
    out = tmp_path / "out"
    res = run(["--dataset", f"mind:{data}", "--methods", "freshrec,freshrec:model=covis,popularity,covis20,item-ctr",
               "--out", str(out), "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert "| method | AUC | gAUC | logloss |" in res.output
    doc = orjson.loads((out / "results.json").read_bytes())
    by = {m["method"]: m for m in doc["methods"]}
    assert doc["stream"]["impressions_scored"] == 120
    # the counting baseline's click model is the item CTR; the learning model's is its own
    assert by["freshrec(model=covis)"]["auc"] == pytest.approx(by["item-ctr"]["auc"])
    assert 0.0 <= by["freshrec"]["auc"] <= 1.0 and by["freshrec"]["auc"] != pytest.approx(by["item-ctr"]["auc"])
    assert by["freshrec"]["logloss"] is not None and by["covis20"]["logloss"] is None
    assert (out / "hitrate.png").read_bytes()[:8] == PNG


def test_eval_default_methods_on_mind_add_item_ctr(tmp_path: Path):
    data = tmp_path / "mind"
    data.mkdir()
    write_mind(data, rows=40)
    res = run(["--dataset", f"mind:{data}", "--methods", "popularity", "--out", str(tmp_path / "o"), "--k", "5"])
    assert res.exit_code == 0, res.output
    assert "HitRate@5" in res.output and "item-ctr" not in res.output  # explicit --methods wins


def test_eval_errors_are_clear(tmp_path: Path, monkeypatch):
    res = run(["--dataset", "synthetic:users=5,items=10,events=50", "--methods", "nope", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown method 'nope'" in res.output
    res = run(["--dataset", f"movielens:{tmp_path / 'missing'}", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "does not exist" in res.output
    import sys

    monkeypatch.setitem(sys.modules, "rtrec.models", None)  # as if rtrec failed to import
    res = run(["--dataset", "synthetic:users=5,items=10,events=50", "--methods", "popularity,rtrec",
               "--out", str(tmp_path / "x"), "--jobs", "1"])
    assert res.exit_code != 0 and "pip install rtrec" in res.output
    assert not (tmp_path / "x" / "results.md").exists()


def test_auto_sample_every():
    assert auto_sample_every(600) == 1
    assert auto_sample_every(25_000) == 1
    assert auto_sample_every(100_000) == 4


def test_default_specs_give_popularity_and_on_news_freshrec_the_half_life_of_the_kind():
    from freshrec.evaluation.cli import default_specs

    assert default_specs("movielens:/x", False) == ["freshrec", "popularity:half_life_s=2592000", "covis20",
                                                    "funkmf", "rtrec"]
    mind = default_specs("mind:/x", True)
    assert mind[-1] == "item-ctr"
    assert "popularity:half_life_s=3600" in mind and "freshrec:half_life_s=3600" in mind
    assert default_specs("synthetic", True)[:2] == ["freshrec", "popularity"]


def test_default_out_dir_is_eval_results(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run(["--dataset", "synthetic:users=10,items=20,events=300", "--methods", "popularity"])
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "eval-results").iterdir()
    assert run_dir.name.startswith("synthetic-")
    assert {p.name for p in run_dir.iterdir()} == {"results.md", "results.json", "hitrate.png"}
