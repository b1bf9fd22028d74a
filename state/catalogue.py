"""The item catalogue: attributes from ``item_upsert``, deletions from ``item_delete``.

Rows are keyed by ``item_id`` (the catalogue topic is keyed by item, so one partition owns an
item). Updates are last-writer-wins by event time, so an old upsert replayed or arriving late
never resurrects a deleted item or overwrites newer attributes.
"""

from __future__ import annotations

from typing import MutableMapping


class Catalogue:
    """Item attributes and deletions, with a category index for trending per category."""

    def __init__(self, rows: MutableMapping[str, dict] | None = None) -> None:
        self.rows: MutableMapping[str, dict] = {} if rows is None else rows
        self.by_category: dict[str, set[str]] = {}
        self.deleted: set[str] = set()
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute the derived indices from the rows (after recovery)."""
        self.by_category.clear()
        self.deleted.clear()
        for item, row in self.rows.items():
            self._index(item, row)

    def _index(self, item: str, row: dict) -> None:
        if row.get("deleted"):
            self.deleted.add(item)
        else:
            self.deleted.discard(item)
            cat = row.get("category")
            if cat:
                self.by_category.setdefault(cat, set()).add(item)

    def _unindex(self, item: str, row: dict) -> None:
        cat = row.get("category")
        if cat and cat in self.by_category:
            self.by_category[cat].discard(item)

    def apply(self, event: dict) -> bool:
        """Apply an ``item_upsert`` / ``item_delete``; returns False when older than the row."""
        item = event["item_id"]
        old = self.rows.get(item)
        if old is not None and old.get("ts", 0) > event["ts"]:
            return False
        if old is not None:
            self._unindex(item, old)
        if event["type"] == "item_delete":
            row = {"deleted": True, "ts": event["ts"]}
        else:
            row = {
                "category": event.get("category"),
                "tags": event.get("tags") or [],
                "text": event.get("text") or "",
                "created_at": event.get("created_at") or event["ts"],
                "deleted": False,
                "ts": event["ts"],
            }
        self.rows[item] = row
        self._index(item, row)
        return True

    def is_deleted(self, item: str) -> bool:
        return item in self.deleted

    def category(self, item: str) -> str | None:
        row = self.rows.get(item)
        return None if row is None else row.get("category")

    def __len__(self) -> int:
        return len(self.rows)
