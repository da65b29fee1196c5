import pytest

from miniray._options import (actor_shape, task_shape, validate_actor_options,
                              validate_task_options)


def test_task_shape_defaults_to_one_cpu():
    assert task_shape({}) == (("CPU", 1.0),)
    assert task_shape({"num_cpus": 0}) == ()
    assert task_shape({"num_cpus": 2, "resources": {"x": 1}}) == (("CPU", 2.0), ("x", 1.0))


def test_actor_holds_no_cpu_by_default():
    assert actor_shape({}) == ()
    assert actor_shape({"num_cpus": 1}) == (("CPU", 1.0),)


@pytest.mark.parametrize("opts", [{"num_cpus": -1}, {"num_cpus": 1.5}, {"num_returns": -1},
                                  {"max_retries": -2}, {"num_cpu": 1}, {"resources": {"CPU": 1}}])
def test_bad_task_options(opts):
    with pytest.raises(ValueError):
        validate_task_options(opts)


def test_unknown_option_suggests():
    with pytest.raises(ValueError, match="Did you mean 'num_cpus'"):
        validate_task_options({"num_cpu": 1})


@pytest.mark.parametrize("opts", [{"lifetime": "forever"}, {"max_concurrency": 0},
                                  {"get_if_exists": True}, {"name": ""}])
def test_bad_actor_options(opts):
    with pytest.raises(ValueError):
        validate_actor_options(opts)
