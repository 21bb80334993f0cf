"""The words of the days task: day and month names and its templates (no imports, so the word
tokenizer can read them without importing the task)."""

from __future__ import annotations

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip

# (kind, template, offset): the answer is the item `offset` steps after the one in [X]
TEMPLATES: list[tuple[str, str, int]] = [
    ("day", "Today it is [X], tomorrow it is", 1),
    ("day", "If today is [X], tomorrow is", 1),
    ("day", "Yesterday was [X], so today is", 1),
    ("day", "It is [X] today, and tomorrow it will be", 1),
    ("day", "Today is [X], so yesterday was", -1),
    ("month", "This month is [X], next month is", 1),
    ("month", "If this month is [X], next month will be", 1),
    ("month", "Last month was [X], so this month is", 1),
    ("month", "It is [X] now, and last month was", -1),
]
ITEMS = {"day": DAYS, "month": MONTHS}


def vocabulary_texts() -> list[str]:
    """Texts whose pieces cover every word this task can write (for the word tokenizer)."""
    return [t.replace("[X]", DAYS[0]) for _, t, _ in TEMPLATES] + [" " + w for w in DAYS + MONTHS]
