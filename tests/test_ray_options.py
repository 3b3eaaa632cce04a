"""The Ray backend's options, checked before anything starts (no cluster needed): what does
not apply on Ray is refused by name, and a missing Ray says what to install."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import snakeden
from snakeden._config import RayOptions, make_config

FRONTS = [snakeden.Pool, snakeden.SyncPool]


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"start_method": "fork"}, "start_method='fork'"),
        ({"preload": ["json"]}, "preload"),
        ({"max_memory": 1 << 30}, "max_memory"),
    ],
)
def test_a_local_only_option_is_refused_on_ray(front: Any, option: Any, named: str) -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed: the missing-ray error comes first")
    with pytest.raises(ValueError, match="does not apply with backend='ray'") as info:
        front("m", backend="ray", **option)
    assert named in str(info.value)


def test_ray_options_without_the_ray_backend_are_refused() -> None:
    with pytest.raises(ValueError, match="backend='ray' only"):
        make_config("m", {"ray": RayOptions()}).validate()


def test_a_misspelt_ray_option_names_the_closest() -> None:
    with pytest.raises(TypeError, match="did you mean 'num_cpus'"):
        make_config("m", {"backend": "ray", "ray": {"num_cpu": 2}})


def test_a_dict_of_ray_options_becomes_ray_options() -> None:
    cfg = make_config("m", {"backend": "ray", "ray": {"num_cpus": 2, "placement": "spread"}})
    assert cfg.ray == RayOptions(num_cpus=2, placement="spread")


@pytest.mark.parametrize(
    ("ray", "text"),
    [
        ({"placement": "spraed"}, "did you mean 'spread'"),
        ({"placement": 3}, "a ray PlacementGroup"),
        ({"num_cpus": -1}, "must be >= 0"),
    ],
)
def test_bad_ray_option_values_are_refused(ray: Any, text: str) -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed: the missing-ray error comes first")
    with pytest.raises(ValueError, match=text):
        make_config("m", {"backend": "ray", "ray": ray}).validate()


def test_a_bad_backend_lists_the_backends() -> None:
    with pytest.raises(ValueError, match="'local', 'ray'"):
        make_config("m", {"backend": "rey"}).validate()


@pytest.mark.parametrize("front", FRONTS)
def test_without_ray_the_error_says_what_to_install(
    front: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    # A stand-in for an environment without Ray (installing and removing it per test is not
    # an option): find_spec is how the check looks for it.
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'snakeden\[ray\]'"):
        front("m", backend="ray")
