"""MovieLens (GroupLens) ratings as an event stream: item_upserts for the movies, then ratings.

Official formats read (the path is a directory or the ratings file itself):

* ML-100K: ``u.data`` (``user \\t item \\t rating \\t unix_seconds``; also ``u1.base`` & co.),
  movies in ``u.item`` beside it (``id|title|release date|video date|url|19 genre flags``,
  latin-1), genre names from ``u.genre`` when present;
* ML-latest / 20M / 25M / 32M: ``ratings.csv`` (``userId,movieId,rating,timestamp`` with a header)
  and ``movies.csv`` (``movieId,title,genres``, genres ``|``-separated, CSV quoting);
* ML-1M / 10M: ``ratings.dat`` (``user::item::rating::ts``) and ``movies.dat`` (``id::title::genres``).

Every movie becomes an ``item_upsert`` (category = first genre, tags = all genres, text = title,
created_at = release date when parsable, else the year in the title, else 0), with ``ts`` = the
first rating's time so the whole stream is in event-time order. Every rating becomes a ``rating``
event (``value`` = the rating, ``ts`` = unix seconds * 1000), sorted by time, ties in file order.
Event ids: ``ml:{row}`` (0-based data row of the ratings file) and ``ml:item:{movie_id}``.
"""

from __future__ import annotations

import calendar
import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from freshrec.streams.datasets import Dataset
from freshrec.streams.schema import SCHEMA_VERSION

STANDARD_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), 1)}
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
NO_GENRES = "(no genres listed)"


@dataclass(frozen=True)
class MovieLensFiles:
    """Where the ratings and movies of one MovieLens copy are, and in which format."""

    ratings: Path
    fmt: str  # "udata" | "csv" | "dat"
    items: Path | None
    genres: Path | None = None


def find_movielens(path: str | Path) -> MovieLensFiles:
    """Locate the ratings file (and the movies file beside it) for a directory or file path."""
    p = Path(path)
    if p.is_dir():
        for name, fmt in (("u.data", "udata"), ("ratings.csv", "csv"), ("ratings.dat", "dat")):
            if (p / name).is_file():
                return find_movielens(p / name)
        raise FileNotFoundError(f"no MovieLens ratings in {p} (looked for u.data, ratings.csv, ratings.dat)")
    if not p.is_file():
        raise FileNotFoundError(f"MovieLens path {p} does not exist")
    d = p.parent
    if p.suffix == ".csv":
        return MovieLensFiles(p, "csv", _beside(d, "movies.csv"))
    if p.suffix == ".dat":
        return MovieLensFiles(p, "dat", _beside(d, "movies.dat"))
    return MovieLensFiles(p, "udata", _beside(d, "u.item"), _beside(d, "u.genre"))


def _beside(d: Path, name: str) -> Path | None:
    return d / name if (d / name).is_file() else None


def _rating_value(text: str) -> int | float:
    v = float(text)
    return int(v) if v.is_integer() else v


def _date_ms(text: str) -> int | None:
    """``01-Jan-1995`` -> epoch ms (UTC midnight), None when not parsable."""
    parts = text.strip().split("-")
    if len(parts) != 3:
        return None
    month = _MONTHS.get(parts[1].lower()[:3])
    try:
        day, year = int(parts[0]), int(parts[2])
        return calendar.timegm((year, month, day, 0, 0, 0)) * 1000 if month else None
    except (ValueError, OverflowError):
        return None


def _year_ms(title: str) -> int:
    m = _YEAR_IN_TITLE.search(title)
    return calendar.timegm((int(m.group(1)), 1, 1, 0, 0, 0)) * 1000 if m else 0


# (movie_id, title, genres, created_at)
_Movie = tuple[str, str, list[str], int]


def _read_u_item(path: Path, genres_path: Path | None) -> list[_Movie]:
    genres = list(STANDARD_GENRES)
    if genres_path is not None:
        named = []
        for line in genres_path.read_text(encoding="latin-1").splitlines():
            name, sep, idx = line.strip().rpartition("|")
            if sep and idx.isdigit():
                named.append((int(idx), name))
        if named:
            genres = [n for _, n in sorted(named)]
    n = len(genres)
    movies = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        flags = f[-n:] if len(f) >= 5 + n else []
        movie_genres = [g for g, flag in zip(genres, flags) if flag.strip() == "1"]
        created = _date_ms(f[2]) if len(f) > 2 else None
        movies.append((f[0].strip(), f[1].strip() if len(f) > 1 else "", movie_genres,
                       created if created is not None else 0))
    return movies


def _split_genres(text: str) -> list[str]:
    text = text.strip()
    return [] if not text or text == NO_GENRES else [g for g in text.split("|") if g]


def _read_movies_csv(path: Path) -> list[_Movie]:
    movies = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header and header[0].strip().isdigit():  # no header line
            reader = iter([header, *reader])
        for row in reader:
            if len(row) < 2:
                continue
            title = row[1].strip()
            movies.append((row[0].strip(), title, _split_genres(row[2]) if len(row) > 2 else [], _year_ms(title)))
    return movies


def _read_movies_dat(path: Path) -> list[_Movie]:
    movies = []
    for line in path.read_text(encoding="latin-1").splitlines():
        f = line.split("::")
        if len(f) >= 2:
            title = f[1].strip()
            movies.append((f[0].strip(), title, _split_genres(f[2]) if len(f) > 2 else [], _year_ms(title)))
    return movies


class MovieLens(Dataset):
    """A MovieLens copy as an event stream (files located now, parsed on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.files = find_movielens(path)
        self.name = f"movielens:{path}"
        self._parsed: tuple[list[_Movie], list[tuple]] | None = None

    def _ratings(self) -> list[tuple[str, str, int | float, int, int]]:
        """(user, item, value, unix_seconds, row) for every data row, in file order."""
        f = self.files
        out = []
        if f.fmt == "csv":
            with f.ratings.open(encoding="utf-8", newline="") as fh:
                reader = csv.reader(fh)
                row_no = 0
                for row in reader:
                    if len(row) < 4:
                        continue
                    if not row[3].strip().lstrip("-").isdigit():  # header
                        continue
                    out.append((row[0].strip(), row[1].strip(), _rating_value(row[2]), int(row[3]), row_no))
                    row_no += 1
            return out
        sep = "::" if f.fmt == "dat" else None  # u.data: tabs (split() on whitespace)
        with f.ratings.open(encoding="latin-1") as fh:
            row_no = 0
            for line in fh:
                parts = line.split(sep) if sep else line.split()
                if len(parts) < 4:
                    continue
                out.append((parts[0].strip(), parts[1].strip(), _rating_value(parts[2]), int(parts[3]), row_no))
                row_no += 1
        return out

    def _parse(self) -> tuple[list[_Movie], list[tuple]]:
        if self._parsed is None:
            f = self.files
            movies: list[_Movie] = []
            if f.items is not None:
                movies = (_read_u_item(f.items, f.genres) if f.fmt == "udata"
                          else _read_movies_csv(f.items) if f.fmt == "csv" else _read_movies_dat(f.items))
            ratings = self._ratings()
            ratings.sort(key=lambda r: r[3])  # stable: ties keep file order
            self._parsed = (movies, ratings)
        return self._parsed

    def _count(self) -> int:
        movies, ratings = self._parse()
        return len(movies) + len(ratings)

    def __iter__(self) -> Iterator[dict]:
        movies, ratings = self._parse()
        first_ts = ratings[0][3] * 1000 if ratings else 0
        for movie_id, title, genres, created in movies:
            event = {"v": SCHEMA_VERSION, "type": "item_upsert", "event_id": f"ml:item:{movie_id}", "ts": first_ts,
                     "item_id": movie_id, "tags": list(genres), "text": title, "created_at": created}
            if genres:
                event["category"] = genres[0]
            yield event
        for user, item, value, secs, row in ratings:
            yield {"v": SCHEMA_VERSION, "type": "rating", "event_id": f"ml:{row}", "ts": secs * 1000,
                   "user_id": user, "item_id": item, "value": value}


def load_movielens(path: str | Path) -> Iterator[dict]:
    """Events of the MovieLens copy at ``path`` (a directory or the ratings file).

    Missing files raise FileNotFoundError here, not at the first ``next()``.
    """
    return iter(MovieLens(path))
