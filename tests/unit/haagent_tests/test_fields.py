"""The one field reader: the same rules and one-line messages for every input it reads."""

from __future__ import annotations

from haagent.fields import Fields


def test_every_bad_field_is_one_line_and_nothing_stops_at_the_first():
    problems: list[str] = []
    f = Fields({"a": "x", "b": 1.5, "c": -1, "d": [1], "e": "yes", "f": float("nan"), "typo": 1}, "sec", problems)
    assert f.number("a", 2.0) == 2.0  # a bad value falls back to the default
    assert f.number("b", integer=True, fallback=False) is None
    assert f.number("c", non_negative=True, fallback=False) is None
    assert f.string_list("d") == ()
    assert f.boolean("e", False) is False
    assert f.number("f", fallback=False) is None
    assert f.string("missing") is None
    f.finish()
    assert problems == [
        "sec.a: must be a number (got 'x')",
        "sec.b: must be a whole number (got 1.5)",
        "sec.c: must not be negative (got -1)",
        "sec.d: must be a list of strings (got [1])",
        "sec.e: must be true or false (got 'yes')",
        "sec.f: must be a number (got nan)",
        "sec.missing: is required",
        "sec.typo: unknown key",
    ]


def test_conventions_of_a_json_object():
    problems: list[str] = []
    f = Fields({"name": "", "n": None, "tags": ["a", ""]}, "hosts[0]", problems, kind="object",
               unknown="unknown field", null_is_missing=True)
    assert f.string("name", non_empty=True, fallback=False) is None
    assert f.integer("n", 7) == 7  # null counts as absent
    assert f.string_list("tags", [], names=True) == ()
    assert problems == ["hosts[0].name: must be a non-empty string (got '')",
                        "hosts[0].tags: must be a list of names (got ['a', ''])"]
    Fields([1], "vms[2]", problems, kind="object")
    assert problems[-1] == "vms[2]: must be an object (got [1])"
