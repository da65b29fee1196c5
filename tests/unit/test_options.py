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


@pytest.mark.parametrize("opts", [{"num_cpus": -1}, {"num_gpus": 1.5}, {"num_returns": -1},
                                  {"max_retries": -2}, {"num_cpu": 1}, {"resources": {"CPU": 1}},
                                  {"resources": {"accel": 0.00001}}, {"num_cpus": 0.00005}])
def test_bad_task_options(opts):
    with pytest.raises(ValueError):
        validate_task_options(opts)


def test_fractional_amounts_above_one_as_ray_allows():
    # Ray: only unit-instance resources (GPUs) must be whole above 1.
    assert task_shape(validate_task_options({"resources": {"accel": 1.5}})) == (
        ("CPU", 1.0), ("accel", 1.5))
    assert task_shape(validate_task_options({"num_cpus": 1.5})) == (("CPU", 1.5),)
    assert actor_shape(validate_actor_options({"resources": {"accel": 2.25}})) == (
        ("accel", 2.25),)
    validate_task_options({"num_gpus": 0.5, "resources": {"accel": 0.0001}})
    validate_task_options({"num_gpus": 2.0})
    with pytest.raises(ValueError, match="whole number"):
        validate_task_options({"num_gpus": 1.5})
    with pytest.raises(ValueError, match="precision"):
        validate_task_options({"resources": {"accel": 0.00001}})


def test_wrong_amount_types_are_type_errors():
    with pytest.raises(TypeError, match="num_cpus"):
        validate_task_options({"num_cpus": "2"})
    with pytest.raises(TypeError, match="accel"):
        validate_task_options({"resources": {"accel": True}})


def test_unknown_option_suggests():
    with pytest.raises(ValueError, match="Did you mean 'num_cpus'"):
        validate_task_options({"num_cpu": 1})
    with pytest.raises(ValueError, match="Invalid option keyword 'bogus' for actors"):
        validate_actor_options({"bogus": 1})


@pytest.mark.parametrize("opts", [{"lifetime": "forever"}, {"max_concurrency": 0},
                                  {"get_if_exists": True}, {"name": ""}])
def test_bad_actor_options(opts):
    with pytest.raises(ValueError):
        validate_actor_options(opts)


def test_options_not_implemented_warn_once_never_silently():
    import warnings
    from miniray import _options
    _options._warned.discard("runtime_env")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _options.validate_task_options({"runtime_env": {"pip": ["x"]}})
        _options.validate_task_options({"runtime_env": {"pip": ["y"]}})
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "runtime_env" in texts[0] and "not implemented" in texts[0]
