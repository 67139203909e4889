"""The order of the Dockerfile's stages: the cpu target must never need the CUDA base image.

The classic builder (DOCKER_BUILDKIT=0; Compose and other CLIs without buildx fall back to it)
builds every stage from the top of the file down to the target, whether the target needs it or
not. So `docker build --target cpu` and `docker compose up --build` of the cpu service stay
free of the CUDA image only if no stage above `cpu` uses it, and every stage `cpu` depends on
(FROM and COPY --from, transitively) comes before the first stage that does. No engine needed:
this reads the Dockerfile; `make docker-smoke` does the build with the classic builder.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

_FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
_COPY_FROM = re.compile(r"^COPY\s.*--from=(\S+)", re.IGNORECASE)
_META_ARG = re.compile(r"^ARG\s+(\w+)(?:=(\S*))?\s*$", re.IGNORECASE)
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


@dataclass
class Stage:
    index: int
    name: str
    base: str  # as written, ARGs unexpanded
    image: str  # the external image, ARGs expanded; "" when the base is another stage
    parents: set[int] = field(default_factory=set)  # stages used by FROM or COPY --from
    images: set[str] = field(default_factory=set)  # external images used by COPY --from
    instructions: int = 0


def _instructions(text: str) -> list[str]:
    """One string per instruction: comments dropped, backslash continuations joined."""
    joined, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        instruction = (pending + line).strip()
        pending = ""
        if instruction:
            joined.append(instruction)
    return joined


def _expand(value: str, args: dict[str, str]) -> str:
    return _VAR.sub(lambda m: args.get(m[1] or m[3]) or m[2] or "", value)


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile, in file order, with what each one builds on.

    Names are looked up in the whole file, as BuildKit does (the classic builder would take a
    stage defined further down for an image to pull).
    """
    instructions = _instructions(text)
    names = [(m[2] or "").lower() for i in instructions if (m := _FROM.match(i))]
    meta_args: dict[str, str] = {}
    stages: list[Stage] = []

    def stage_ref(ref: str) -> int | None:
        if ref.isdigit() and int(ref) < len(names):
            return int(ref)
        return names.index(ref.lower()) if ref.lower() in names else None

    for instruction in instructions:
        if match := _FROM.match(instruction):
            base, parent = match[1], stage_ref(match[1])
            image = "" if parent is not None else _expand(base, meta_args)
            parents = {parent} if parent is not None else set()
            stages.append(Stage(len(stages), names[len(stages)], base, image, parents))
        elif not stages:
            if match := _META_ARG.match(instruction):
                meta_args[match[1]] = match[2] or ""
        else:
            stages[-1].instructions += 1
            if match := _COPY_FROM.match(instruction):
                source = stage_ref(match[1])
                if source is not None:
                    stages[-1].parents.add(source)
                else:
                    stages[-1].images.add(_expand(match[1], meta_args))
    return stages


def _is_cuda(stage: Stage) -> bool:
    """Whether the stage itself names the CUDA base image (FROM or COPY --from)."""
    images = {stage.image, *stage.images} - {""}
    return "CUDA_IMAGE" in stage.base or any(
        re.search(r"(^|/)nvidia/cuda(:|@|$)", image) for image in images
    )


def _closure(stages: list[Stage], start: int) -> set[int]:
    """The stage and every stage it depends on, transitively."""
    seen, todo = set(), [start]
    while todo:
        index = todo.pop()
        if index not in seen:
            seen.add(index)
            todo.extend(stages[index].parents)
    return seen


def _index(stages: list[Stage], name: str) -> int:
    [index] = [s.index for s in stages if s.name == name]
    return index


def classic_build_problems(text: str, target: str) -> list[str]:
    """Why a classic build of `target` would need the CUDA image; empty when it would not."""
    stages = parse(text)
    target_index = _index(stages, target)
    cuda = [s.index for s in stages if _is_cuda(s)]
    problems = []
    # The classic builder runs every stage down to the target, needed or not.
    for stage in stages[: target_index + 1]:
        used = sorted(i for i in _closure(stages, stage.index) if i in cuda)
        if used:
            problems.append(
                f"stage {stage.index} ({stage.name or stage.base}) is above or is the {target}"
                f" target and uses the CUDA image (through stage(s) {used})"
            )
    needed = _closure(stages, target_index)
    if cuda and max(needed) > min(cuda):
        late = sorted(i for i in needed if i > min(cuda))
        problems.append(
            f"stage(s) {late}, which {target} needs, come after the first CUDA stage {min(cuda)}"
        )
    return problems


def _stage_blocks(text: str) -> tuple[str, list[str]]:
    """The text before the first FROM, and each stage's text (its FROM line down to the next)."""
    starts = [m.start() for m in re.finditer(r"^FROM\s", text, re.MULTILINE | re.IGNORECASE)]
    ends = [*starts[1:], len(text)]
    return text[: starts[0]], [text[a:b] for a, b in zip(starts, ends, strict=True)]


def test_the_parser_sees_every_stage_and_what_it_builds_on() -> None:
    stages = parse(DOCKERFILE.read_text())
    by_name = {s.name: s for s in stages if s.name}
    assert set(by_name) >= {"cpu-build", "cpu", "gpu-base", "gpu-build", "gpu"}
    assert by_name["cpu"].image == by_name["cpu-build"].image == "python:3.11-slim"
    assert re.fullmatch(r"nvidia/cuda:13\.\S*cudnn\S*-runtime\S*", by_name["gpu-base"].image)
    assert by_name["cpu"].parents == {by_name["cpu-build"].index}
    assert by_name["gpu"].parents == {by_name["gpu-base"].index, by_name["gpu-build"].index}


def test_gpu_target_uses_the_cuda_image() -> None:
    # Otherwise the checks below would pass only because no stage looked like CUDA to them.
    text = DOCKERFILE.read_text()
    problems = classic_build_problems(text, "gpu")
    assert any("gpu-base" in p for p in problems), problems


def test_classic_build_of_the_cpu_target_never_reaches_the_cuda_image() -> None:
    assert classic_build_problems(DOCKERFILE.read_text(), "cpu") == []


def test_cpu_is_the_default_target_without_the_cuda_image() -> None:
    """No --target builds the last stage: cpu itself, or `FROM cpu` and nothing more."""
    stages = parse(DOCKERFILE.read_text())
    last = stages[-1]
    cpu = _index(stages, "cpu")
    assert last.index == cpu or (last.parents == {cpu} and last.instructions == 0), last
    # What BuildKit builds for it (only the stages it needs) stays clear of CUDA.
    assert not any(_is_cuda(stages[i]) for i in _closure(stages, last.index))


def test_the_check_catches_gpu_stages_above_cpu() -> None:
    """The layout this replaced: the same stages, the gpu ones first."""
    preamble, blocks = _stage_blocks(DOCKERFILE.read_text())
    stages = parse(DOCKERFILE.read_text())
    gpu_first = sorted(range(len(blocks)), key=lambda i: not stages[i].name.startswith("gpu"))
    reordered = preamble + "".join(blocks[i] for i in gpu_first)
    problems = classic_build_problems(reordered, "cpu")
    assert any("(gpu-base)" in p for p in problems), problems


def test_the_check_catches_a_cuda_dependency_of_cpu() -> None:
    text = """
ARG BASE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE} AS cpu-build
RUN true
FROM ${BASE} AS cpu
COPY --from=cpu-build /a /a
FROM ${CUDA_IMAGE} AS gpu
RUN true
"""
    assert classic_build_problems(text, "cpu") == []
    # cpu copying from the CUDA image itself, or from a stage built on it
    copying = text.replace("--from=cpu-build", "--from=nvidia/cuda:13.0.1-base-ubuntu24.04")
    assert any("(cpu)" in p for p in classic_build_problems(copying, "cpu"))
    from_stage = text.replace("FROM ${BASE} AS cpu-build", "FROM ${CUDA_IMAGE} AS cpu-build")
    problems = classic_build_problems(from_stage, "cpu")
    assert any("(cpu-build)" in p for p in problems) and any("(cpu)" in p for p in problems)
    # a stage cpu needs, defined below the first CUDA stage (clean of CUDA itself)
    late = text.replace("/a /a", "/a /a\nCOPY --from=libs /b /b") + "FROM ${BASE} AS libs\n"
    problems = classic_build_problems(late, "cpu")
    assert any("come after the first CUDA stage" in p for p in problems), problems
