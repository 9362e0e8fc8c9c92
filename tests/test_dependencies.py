"""The project works with the dependency versions it allows: PyAV's API across majors, the declared
ranges against what is installed, and the tested set (constraints.txt) inside those ranges."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import av
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from frames_pipeline.decode import extract_frames, probe
from frames_pipeline.decode._probe import open_container, tolerant_tags

REPO = Path(__file__).resolve().parent.parent
# Keywords of av.open that PyAV 19 removed (its changelog, "Major"): passing one is a TypeError there.
REMOVED_IN_PYAV_19 = frozenset({"metadata_encoding", "metadata_errors", "stream_options"})


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    """The runtime requirements that apply to this interpreter and platform."""
    reqs = [Requirement(text) for text in _project()["dependencies"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def test_every_keyword_we_pass_to_av_open_is_accepted_by_the_installed_pyav(edge_corpus: dict[str, Path]) -> None:
    major = int(av.__version__.split(".")[0])
    assert bool(tolerant_tags()) == (major < 19), f"PyAV {av.__version__}: {tolerant_tags()}"
    # A real open with exactly the keywords the decoder uses: a removed one raises TypeError here.
    with open_container(str(edge_corpus["pattern"])) as container:
        assert container.streams.video


def test_decoding_works_with_pyav_19s_open(edge_corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """PyAV 19's av.open refuses the keywords it removed; whatever PyAV this runs on, decoding must
    not depend on them (with PyAV 18's open passed metadata_errors, every video failed on 19)."""
    real_open = av.open

    def open_like_pyav_19(*args: object, **kwargs: object) -> object:
        removed = REMOVED_IN_PYAV_19 & kwargs.keys()
        if removed:
            raise TypeError(f"open() got an unexpected keyword argument {sorted(removed)[0]!r}")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(av, "open", open_like_pyav_19)
    tolerant_tags.cache_clear()
    try:
        assert probe(edge_corpus["pattern"]).num_frames_from_content == 30
        assert extract_frames(edge_corpus["pattern"], mode="ffmpeg_cpu").frames.shape == (30, 27, 48, 3)
    finally:
        tolerant_tags.cache_clear()


def test_installed_versions_are_inside_the_declared_ranges() -> None:
    outside = []
    for req in _requirements():
        version = importlib.metadata.version(req.name)
        if not req.specifier.contains(version, prereleases=True):
            outside.append(f"{req.name} {version} not in {req.specifier}")
    assert not outside, outside


def test_every_runtime_dependency_has_an_upper_bound() -> None:
    """A new major release must not reach users before it was tested (PyAV 19 did)."""
    unbounded = [str(r) for r in _requirements() if not any(s.operator in ("<", "==", "~=") for s in r.specifier)]
    assert not unbounded, unbounded


def _constraints() -> dict[str, list[tuple[str, str | None]]]:
    """{name: [(version, marker or None)]} of constraints.txt."""
    pins: dict[str, list[tuple[str, str | None]]] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        req = Requirement(text)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt pins exact versions: {text}"
        pins.setdefault(_normal(req.name), []).append((spec.version, str(req.marker) if req.marker else None))
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_tested_set_is_inside_the_declared_ranges_on_every_python() -> None:
    pins = _constraints()
    reqs = [Requirement(text) for text in _project()["dependencies"]]
    supported = _project()["requires-python"]
    assert supported == ">=3.11,<3.14", "update the loop below and constraints.txt with the Python range"
    problems = []
    for python in ("3.11", "3.12", "3.13"):
        env = default_environment() | {"python_version": python, "python_full_version": f"{python}.0"}
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            chosen = [v for v, marker in pins.get(_normal(req.name), []) if marker is None or _marker(marker, env)]
            if len(chosen) != 1:
                problems.append(f"python {python}: constraints.txt pins {req.name} {len(chosen)} times")
            elif not req.specifier.contains(chosen[0], prereleases=True):
                problems.append(f"python {python}: {req.name}=={chosen[0]} not in {req.specifier}")
    assert not problems, problems


def _marker(text: str, env: dict[str, str]) -> bool:
    return Requirement(f"x; {text}").marker.evaluate(env)  # type: ignore[union-attr]
