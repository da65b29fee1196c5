"""When actors end, as Ray documents: with their last handle (no cyclic-GC
delay), with their owner, never because of a get_actor() handle alone."""
from __future__ import annotations

import gc

import pytest

import miniray
from miniray.exceptions import ActorDiedError, RayActorError
from tests.conftest import wait_for


@miniray.remote(num_cpus=1)
class Holder:
    def __init__(self):
        self.value = 0          # an attribute named like a method, a common pattern

    def value(self):            # noqa: F811 (the method must win over the attribute)
        return "method"

    def pid(self):
        import os
        return os.getpid()

    def make_child(self):
        self.child = Holder.remote()
        return miniray.get(self.child.pid.remote())


def cpus():
    return miniray.available_resources().get("CPU", 0)


@pytest.fixture
def no_gc():
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_del_ends_the_actor_and_frees_its_cpu_without_the_cyclic_gc(ray_start, no_gc):
    a = Holder.remote()
    miniray.get(a.pid.remote())
    assert cpus() == 1.0
    del a
    assert wait_for(lambda: cpus() == 2.0, timeout=5)


def test_rebinding_ends_the_first_actor(ray_start, no_gc):
    a = Holder.remote()
    first = miniray.get(a.pid.remote())
    a = Holder.remote()
    assert miniray.get(a.pid.remote()) != first
    assert wait_for(lambda: cpus() == 1.0, timeout=5)


@miniray.remote
def use(handle):
    return miniray.get(handle.pid.remote())


def test_handle_passed_to_a_finished_task_does_not_keep_the_actor(ray_start, no_gc):
    a = Holder.remote()
    miniray.get(use.remote(a))
    del a
    assert wait_for(lambda: cpus() == 2.0, timeout=5)


def test_temporary_handle_lives_through_the_call(ray_start):
    assert miniray.get(Holder.remote().pid.remote()) > 0


def test_actors_owned_by_a_deleted_actor_end_with_it(ray_factory, no_gc):
    miniray_ = ray_factory(num_cpus=3)
    a = Holder.remote()
    miniray_.get(a.make_child.remote())
    assert cpus() == 1.0
    del a
    assert wait_for(lambda: cpus() == 3.0, timeout=10)


def test_get_actor_handle_does_not_keep_a_named_actor_alive(ray_start, no_gc):
    a = Holder.options(name="named").remote()
    miniray.get(a.pid.remote())
    b = miniray.get_actor("named")
    assert miniray.get(b.pid.remote()) > 0
    del a
    assert wait_for(lambda: cpus() == 2.0, timeout=5)
    with pytest.raises(RayActorError):
        miniray.get(b.pid.remote(), timeout=10)
    with pytest.raises(ValueError):
        miniray.get_actor("named")


def test_detached_named_actor_lives_through_get_actor_handles(ray_start):
    a = Holder.options(name="kept", lifetime="detached").remote()
    del a
    b = miniray.get_actor("kept")
    assert miniray.get(b.pid.remote()) > 0
    miniray.kill(b)


def test_method_wins_over_an_instance_attribute_of_the_same_name(ray_start):
    a = Holder.remote()
    assert miniray.get(a.value.remote()) == "method"


def test_actor_died_error_is_what_calls_on_a_dead_actor_raise(ray_start):
    a = Holder.remote()
    miniray.kill(a)
    with pytest.raises(ActorDiedError):
        miniray.get(a.pid.remote(), timeout=10)
