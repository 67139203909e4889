"""Print the requirements of pyproject.toml for the given extras, one per line.

The image build installs them in a layer of their own, before the sources are copied, so an
edit to the code does not reinstall onnxruntime. Python 3.11's tomllib reads the file: the
build stage needs nothing but the base image's python3.

Usage: python3 docker/requirements.py pyproject.toml serve,cpu > requirements.txt
"""

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    """The base dependencies followed by those of each extra; an unknown extra is an error."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    return list(project.get("dependencies", [])) + [r for e in extras for r in optional[e]]


if __name__ == "__main__":
    path, extras = sys.argv[1], sys.argv[2]
    print("\n".join(requirements(path, [e for e in extras.split(",") if e])))
