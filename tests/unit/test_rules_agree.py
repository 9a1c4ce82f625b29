"""The collection's Jinja tests accept exactly what the mcpops server accepts.

The roles check mcp_server_app and mcp_server_redis_key_prefix with mcpops.deploy.mcp_app_path and
mcpops.deploy.redis_key_prefix before they deploy; the server checks the same values again when it
loads its config. If the two ever disagreed, a deploy would pass its preflight and then the server
would refuse to start (or the preflight would refuse a value the server takes). Both sides are run
over a fixed corpus and over a few thousand deterministic random strings.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
from mcpops_server.config import _APP_RE, _PREFIX_RE

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "plugins/test" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mcp_app_path = load("mcp_app_path").mcp_app_path
redis_key_prefix = load("redis_key_prefix").redis_key_prefix

UNICODE_LETTER = "é"
ALPHABET = "aqZ_07._:-/ " + UNICODE_LETTER

APP_GOOD = [
    "example_app.server:mcp",
    "app:mcp",
    "_a:_b",
    "a1.b2.c3:d4",
    "pkg.mod:obj.attr.sub",
    "A.B:C",
    "pkg:obj.xé",  # after their first character, later attribute names use \w on the server
    "pkg:obj._x٣",  # \w also takes non-ASCII digits
    "pkg:mcp\n",  # "$" matches before a final newline
]
APP_BAD = [
    "",
    "app",
    ":mcp",
    "app:",
    "app::mcp",
    "a:b:c",
    "1app:mcp",
    "app:1mcp",
    "app.:mcp",
    ".app:mcp",
    "app..x:mcp",
    "app:mcp.",
    "app:mcp..x",
    "app:mcp.1x",
    "app-x:mcp",
    "app/x:mcp",
    "app :mcp",
    " app:mcp",
    "app:mcp ",
    "app:mcp\n\n",
    "\napp:mcp",
    "pké:mcp",
    "pkg:mcpé",  # the first attribute name is ASCII only on the server
    "pkg:obj.é",  # so is the first character of every name
    "pkg:obj.é x",
]
PREFIX_GOOD = ["mcpops:", "a", "tenant-a.sessions:", "A_b.c:d-e", "0", "-", "x" * 64, "mcpops:\n"]
PREFIX_BAD = ["", "x" * 65, "a b", "a/b", "é", "mcpops:é", "a\tb", "a\nb", "a:\n\n", "\na", "mcpops:\r"]


def random_strings(seed: int, count: int, seeds: list[str]) -> list[str]:
    """Random strings over ALPHABET, and random edits of the good examples (to land near the boundary)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        out.append("".join(rng.choices(ALPHABET, k=rng.randint(0, 16))))
        s = rng.choice(seeds).rstrip("\n")
        for _ in range(rng.randint(1, 3)):
            i = rng.randint(0, len(s))
            op = rng.randrange(3)
            if op == 0:
                s = s[:i] + rng.choice(ALPHABET) + s[i:]
            elif op == 1:
                s = s[:i] + s[i + 1 :]
            else:
                s = s[:i] + rng.choice(ALPHABET) + s[i + 1 :]
        out.append(s)
    return out


@pytest.mark.parametrize("value", APP_GOOD + APP_BAD, ids=repr)
def test_app_path_corpus(value):
    expected = value in APP_GOOD
    assert (_APP_RE.match(value) is not None) is expected, "corpus is wrong about the server"
    assert mcp_app_path(value) is expected


@pytest.mark.parametrize("value", PREFIX_GOOD + PREFIX_BAD, ids=repr)
def test_key_prefix_corpus(value):
    expected = value in PREFIX_GOOD
    assert (_PREFIX_RE.match(value) is not None) is expected, "corpus is wrong about the server"
    assert redis_key_prefix(value) is expected


def test_app_path_agrees_on_random_strings():
    samples = random_strings(1, 2500, APP_GOOD)
    accepted = [s for s in samples if _APP_RE.match(s)]
    disagree = [s for s in samples if mcp_app_path(s) is not bool(_APP_RE.match(s))]
    assert disagree == []
    # the sample reached both sides of the boundary, the Unicode case included
    assert 200 < len(accepted) < len(samples) - 200
    assert any(UNICODE_LETTER in s for s in accepted)
    assert any(UNICODE_LETTER in s for s in samples if s not in accepted)


def test_key_prefix_agrees_on_random_strings():
    samples = random_strings(2, 2500, PREFIX_GOOD) + ["".join(["a:"] * 32 + [c]) for c in ALPHABET]
    accepted = [s for s in samples if _PREFIX_RE.match(s)]
    disagree = [s for s in samples if redis_key_prefix(s) is not bool(_PREFIX_RE.match(s))]
    assert disagree == []
    assert 200 < len(accepted) < len(samples) - 200
    assert any(len(s) == 64 for s in accepted)
    assert any(len(s) == 65 and set(s) <= set("aqZ_07.:-") for s in samples if s not in accepted)


@pytest.mark.parametrize("check", [mcp_app_path, redis_key_prefix])
@pytest.mark.parametrize("value", [None, 1, b"app:mcp", ["app:mcp"], {"app": "mcp"}], ids=repr)
def test_non_strings_are_false(check, value):
    assert check(value) is False
