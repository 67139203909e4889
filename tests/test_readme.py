"""The README, run as a user would (issue #21): every shell and Python example in it.

The repository is copied to a temporary folder (the files git tracks or would track, as a
clone has them, with this checkout's .venv linked in), the server is started the README's
way (`make serve`, on a free port: the venv is not reinstalled), and every ```bash and
```python block runs there in README order, with only the port substituted (127.0.0.1:8000
in the text; CNNSERVE_URL for the CLI's default). Each must exit 0; where the README shows
its output (the next block, tagged ``json output`` or ``text output``), the output must
match: the same JSON, or the same text token by token, numbers within 1e-3.

A block preceded by ``<!-- readme-test: skip (reason) -->`` (GPU, Docker, Kubernetes, hours
of training) or ``<!-- readme-test: setup (...) -->`` is reported as skipped with its reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from testkit import REPO, free_port, wait_ready

pytestmark = pytest.mark.slow

README = REPO / "README.md"
_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)
_MARK = re.compile(r"<!--\s*readme-test:\s*(?P<kind>skip|setup)\s*\((?P<why>[^)]*)\)\s*-->\s*$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str
    expected: str | None  # the output block that follows, if any
    expected_kind: str | None  # "json" or "text"
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    """The runnable blocks of ``text``, each with the output block right after it."""
    fences = list(_FENCE.finditer(text))
    blocks = []
    for i, fence in enumerate(fences):
        info = fence["info"].strip().split()
        if not info or info[0] not in ("bash", "python") or "output" in info:
            continue
        before = text[: fence.start()].rstrip().splitlines()
        mark = _MARK.search(before[-1]) if before else None
        skip = f"{mark['kind']}: {mark['why']}" if mark else None
        expected = kind = None
        following = fences[i + 1] if i + 1 < len(fences) else None
        if following is not None and not text[fence.end() : following.start()].strip():
            tags = following["info"].split()
            if tags[-1:] == ["output"]:
                expected, kind = following["body"], tags[0]
        line = text[: fence.start()].count("\n") + 1
        blocks.append(Block(line, info[0], fence["body"], expected, kind, skip))
    return blocks


def _tokens(text: str) -> list[str]:
    return text.split()


def _same_token(expected: str, actual: str) -> bool:
    if _NUMBER.match(expected) and _NUMBER.match(actual):
        return math.isclose(float(expected), float(actual), abs_tol=TOLERANCE)
    return expected == actual


def same_text(expected: str, actual: str) -> bool:
    want, got = _tokens(expected), _tokens(actual)
    return len(want) == len(got) and all(map(_same_token, want, got))


def same_json(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(same_json(expected[k], actual[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(map(same_json, expected, actual))
        )
    if isinstance(expected, float) or isinstance(actual, float):
        return isinstance(actual, int | float) and math.isclose(
            float(expected), float(actual), abs_tol=TOLERANCE
        )
    return bool(expected == actual)


@dataclass
class Walk:
    root: Path
    port: int
    env: dict[str, str]


def _copy_repository(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(REPO / ".venv")


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    """A copy of the repository with `make serve` running on a free port."""
    root = tmp_path_factory.mktemp("readme") / "cnnserve"
    _copy_repository(root)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNNSERVE_", "OTEL_"))}
    env |= {"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}
    stamps = [f"-o.venv/.stamp-serve-{accel}" for accel in ("cpu", "gpu")]  # installed
    log = (root / "serve.log").open("wb")
    server = subprocess.Popen(
        ["make", "--no-print-directory", *stamps, "serve", f"PORT={port}"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make and the server it starts stop together
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, (root / "serve.log").read_text, timeout_s=120)
        yield Walk(root, port, env | {"CNNSERVE_URL": url})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        log.close()


BLOCKS = readme_blocks(README.read_text())


def test_the_readme_has_examples_with_outputs() -> None:
    """The walk below is not vacuous: the README shows commands, and what they print."""
    runnable = [b for b in BLOCKS if b.skip is None]
    assert len(runnable) >= 6 and sum(b.expected is not None for b in runnable) >= 4
    assert all(b.skip for b in BLOCKS if "docker " in b.code or "kubectl " in b.code)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line-{b.line}" for b in BLOCKS])
def test_readme_block(walk: Walk, block: Block) -> None:
    if block.skip:
        pytest.skip(block.skip)
    code = block.code.replace("127.0.0.1:8000", f"127.0.0.1:{walk.port}")
    command = ["bash", "-euo", "pipefail", "-c", code]
    if block.language == "python":
        command = [str(walk.root / ".venv" / "bin" / "python"), "-c", code]
    result = subprocess.run(
        command, cwd=walk.root, env=walk.env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"README line {block.line}:\n{result.stdout}{result.stderr}"
    if block.expected is None:
        return
    shown = f"README line {block.line} shows:\n{block.expected}\nit printed:\n{result.stdout}"
    if block.expected_kind == "json":
        assert same_json(json.loads(block.expected), json.loads(result.stdout)), shown
    else:
        assert same_text(block.expected, result.stdout), shown


@pytest.mark.parametrize(
    ("expected", "actual", "same"),
    [
        ('{"p": 0.9123, "n": [1, 2]}', '{"p": 0.91234, "n": [1, 2]}', True),
        ('{"p": 0.9123}', '{"p": 0.95}', False),
        ('{"p": 1}', '{"p": 1, "q": 2}', False),
        ('["a"]', '["b"]', False),
    ],
)
def test_json_outputs_are_compared_exactly_but_for_float_rounding(
    expected: str, actual: str, same: bool
) -> None:
    assert same_json(json.loads(expected), json.loads(actual)) is same


def test_text_outputs_are_compared_token_by_token() -> None:
    assert same_text("espresso 0.912  False\n", "espresso 0.9121 False")
    assert not same_text("espresso 0.912", "cup 0.912")
    assert not same_text("a b", "a b c")


def test_blocks_are_read_with_their_marks_and_outputs() -> None:
    text = (
        "<!-- readme-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n\n"
        "```bash\necho hi\n```\n\n```text output\nhi\n```\n\n"
        "```python\nprint(1)\n```\nprose\n```text output\n1\n```\n"
    )
    gpu, echo, python = readme_blocks(text)
    assert gpu.skip == "skip: needs a GPU" and gpu.expected is None
    assert (echo.expected, echo.expected_kind, echo.skip) == ("hi\n", "text", None)
    assert python.expected is None  # prose between: not its output
