"""The words of the IOI task: its templates, names, places and objects (no imports, so the word
tokenizer can read them without importing the task)."""

from __future__ import annotations

# [A] and [B] are the first two name slots, [S] the third (always the subject).
TEMPLATES = [
    "When [A] and [B] went to the [PLACE], [S] gave the [OBJECT] to",
    "When [A] and [B] got the [OBJECT] at the [PLACE], [S] decided to give it to",
    "After [A] and [B] went to the [PLACE], [S] gave the [OBJECT] to",
    "While [A] and [B] were working at the [PLACE], [S] gave the [OBJECT] to",
    "Then, [A] and [B] went to the [PLACE]. [S] gave the [OBJECT] to",
    "After the lunch, [A] and [B] went to the [PLACE]. [S] gave the [OBJECT] to",
    "Friends [A] and [B] found the [OBJECT] at the [PLACE]. [S] gave it to",
    "When [A] and [B] arrived at the [PLACE], [S] handed the [OBJECT] to",
    "Yesterday, [A] and [B] visited the [PLACE], and [S] passed the [OBJECT] to",
    "At the [PLACE], [A] and [B] found the [OBJECT]. [S] gave it to",
    "Once [A] and [B] reached the [PLACE], [S] threw the [OBJECT] to",
    "Later, [A] and [B] walked to the [PLACE], where [S] showed the [OBJECT] to",
    "After [A] and [B] left the [PLACE], [S] sent the [OBJECT] to",
    "Since [A] and [B] were at the [PLACE], [S] brought the [OBJECT] to",
    "When [A] and [B] met at the [PLACE], [S] offered the [OBJECT] to",
    "The day [A] and [B] spent at the [PLACE] ended when [S] gave the [OBJECT] to",
    "Because [A] and [B] were hungry at the [PLACE], [S] gave the [OBJECT] to",
    "As [A] and [B] left the [PLACE], [S] returned the [OBJECT] to",
]

NAMES = [
    "Aaron", "Adam", "Alan", "Alex", "Alice", "Amy", "Andrew", "Anna", "Anthony", "Arthur",
    "Austin", "Ben", "Brian", "Carl", "Charlie", "Chris", "Claire", "Daniel", "David", "Dean",
    "Edward", "Emily", "Eric", "Frank", "George", "Grace", "Henry", "Jack", "Jacob", "James",
    "Jane", "Jason", "John", "Joseph", "Kate", "Kelly", "Kevin", "Kyle", "Laura", "Lisa",
    "Louis", "Luke", "Maria", "Mark", "Martin", "Mary", "Matthew", "Max", "Michael", "Paul",
    "Peter", "Rachel", "Richard", "Robert", "Rose", "Ryan", "Sam", "Sarah", "Scott", "Sean",
    "Simon", "Steven", "Thomas", "Tom", "Tyler", "William",
]  # fmt: skip

PLACES = [
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park",
    "market", "library", "beach", "museum", "church", "cafe", "bank", "airport", "hotel", "farm",
    "lake", "river", "zoo", "gym", "theater", "mall", "shop", "bakery", "pharmacy", "stadium",
    "cinema", "bar", "club", "castle", "harbor", "island", "village", "forest", "mountain",
    "field", "factory", "bridge", "palace", "party", "concert", "shops",
]  # fmt: skip

OBJECTS = [
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "apple",
    "bag", "ball", "book", "box", "cake", "camera", "card", "chair", "coat", "cookie", "cup",
    "flower", "gift", "guitar", "hat", "jacket", "key", "knife", "lamp", "letter", "map",
    "milk", "note", "orange", "pen", "phone", "photo", "pizza", "plate", "radio", "sandwich",
    "scarf", "shirt", "ticket", "toy", "watch",
]  # fmt: skip


def vocabulary_texts() -> list[str]:
    """Texts whose pieces cover every word this task can write (for the word tokenizer)."""
    filled = [
        t.replace("[A]", NAMES[0]).replace("[B]", NAMES[1]).replace("[S]", NAMES[1])
        .replace("[PLACE]", PLACES[0]).replace("[OBJECT]", OBJECTS[0])
        for t in TEMPLATES
    ]  # fmt: skip
    return filled + [" " + w for w in NAMES + PLACES + OBJECTS]
