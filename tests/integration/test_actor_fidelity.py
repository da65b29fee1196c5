"""Actors as Ray's users rely on them: how a call finds its method, the
built-in methods of every handle, the actor class as a class, and how an
actor ends itself (exit_actor, __ray_terminate__, sys.exit)."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

import miniray
from miniray.actor import ActorClassInheritanceException, exit_actor
from miniray.exceptions import ActorDiedError, RayActorError
from tests.conftest import wait_for, wait_gone


def gone(pid) -> bool:
    return not wait_gone([pid], timeout=15)


# -- a call runs the class's method ---------------------------------------------------------

@miniray.remote(max_concurrency=2)
class ThreadedShadow:
    def __init__(self):
        self.value = 0            # an attribute named like a method

    def value(self):              # noqa: F811
        return "method"


@miniray.remote
class AsyncShadow:
    def __init__(self):
        self.value = 0

    async def value(self):        # noqa: F811
        return "async method"


@miniray.remote
class Kinds:
    SCALE = 3

    def __init__(self):
        self.twice = "shadowed"

    def twice(self, x):           # noqa: F811
        return 2 * x

    @staticmethod
    def static(x):
        return x + 1

    @classmethod
    def scaled(cls, x):
        return cls.SCALE * x

    def __getattr__(self, name):  # reached only for names the class lacks
        raise AttributeError(name)


def test_method_wins_over_attribute_in_threaded_and_async_actors(ray_shared):
    assert miniray.get(ThreadedShadow.remote().value.remote()) == "method"
    assert miniray.get(AsyncShadow.remote().value.remote()) == "async method"


def test_static_and_class_methods_are_bound_as_on_the_class(ray_shared):
    k = Kinds.remote()
    assert miniray.get([k.twice.remote(4), k.static.remote(4), k.scaled.remote(4)]) == [8, 5, 12]


# -- built-in methods -------------------------------------------------------------------------

@miniray.remote
class Slow:
    def __init__(self, delay=0.0):
        time.sleep(delay)
        self.built_at = time.time()
        self.x = 10

    def pid(self):
        return os.getpid()

    def sleep(self, s):
        time.sleep(s)
        return "slept"


@miniray.remote
class Broken:
    def __init__(self):
        raise ValueError("no")

    def ping(self):
        return 1


def test_ray_ready_resolves_once_the_constructor_finished(ray_shared):
    before = time.time()
    a = Slow.remote(0.5)
    assert miniray.get(a.__ray_ready__.remote(), timeout=30) is True
    built_at = miniray.get(a.__ray_call__.remote(lambda self: self.built_at))
    assert before < built_at <= time.time()
    with pytest.raises(RayActorError):
        miniray.get(Broken.remote().__ray_ready__.remote(), timeout=30)


def test_ray_call_runs_a_function_on_the_instance(ray_shared):
    a = Slow.remote()
    assert miniray.get(a.__ray_call__.remote(lambda self, k, m=1: (self.x + k) * m, 5, m=2)) == 30

    def set_x(self, v):
        self.x = v
    miniray.get(a.__ray_call__.remote(set_x, 7))
    assert miniray.get(a.__ray_call__.remote(lambda self: self.x)) == 7


def test_ray_call_awaits_a_coroutine_in_an_async_actor(ray_shared):
    async def double(self, v):
        await asyncio.sleep(0)
        return 2 * v
    assert miniray.get(AsyncShadow.remote().__ray_call__.remote(double, 21)) == 42


def test_ray_terminate_ends_the_actor_after_the_calls_queued_before_it(ray_shared):
    a = Slow.remote()
    pid = miniray.get(a.pid.remote())
    before = a.sleep.remote(0.5)
    end = a.__ray_terminate__.remote()
    after = a.pid.remote()
    assert miniray.get(before, timeout=30) == "slept"
    with pytest.raises(RayActorError):
        miniray.get(end, timeout=30)
    with pytest.raises(RayActorError):
        miniray.get(after, timeout=30)
    assert gone(pid)


def test_ray_terminate_ends_an_async_actor(ray_shared):
    a = AsyncShadow.remote()
    pid = miniray.get(a.__ray_call__.remote(lambda self: os.getpid()))
    with pytest.raises(RayActorError):
        miniray.get(a.__ray_terminate__.remote(), timeout=30)
    with pytest.raises(RayActorError):
        miniray.get(a.value.remote(), timeout=30)
    assert gone(pid)


def test_other_private_names_are_not_methods(ray_shared):
    a = Slow.remote()
    with pytest.raises(AttributeError):
        a._secret
    with pytest.raises(AttributeError):
        a.__ray_unknown__


# -- the actor class ---------------------------------------------------------------------------

@miniray.remote
class Foo:
    """Foo's doc."""
    CONST = 42

    def __init__(self, v=0):
        self.v = v

    @staticmethod
    def factory(x):
        return x * 2

    @classmethod
    def make_const(cls):
        return cls.CONST

    def get(self):
        return self.v


def test_actor_class_exposes_the_class_attributes():
    assert Foo.CONST == 42
    assert Foo.factory(3) == 6
    assert Foo.make_const() == 42
    assert Foo.__doc__ == "Foo's doc." and Foo.__name__ == "Foo"
    listing = dir(Foo)
    for name in ("get", "factory", "make_const", "CONST", "remote", "options", "bind"):
        assert name in listing, name
    assert not hasattr(Foo, "nothing_like_this")
    with pytest.raises(NotImplementedError, match="bind"):
        Foo.bind()


def test_subclassing_an_actor_class_is_refused_as_in_ray():
    assert issubclass(ActorClassInheritanceException, TypeError)
    assert miniray.actor.ActorClassInheritanceException is ActorClassInheritanceException
    with pytest.raises(ActorClassInheritanceException,
                       match="Attempted to define subclass 'Bar' of actor class 'Foo'"):
        class Bar(Foo):
            pass

    class Plain:
        pass
    with pytest.raises(TypeError):        # as in Ray: ours, or Python's metaclass conflict
        class Mixed(Foo, Plain):
            pass


def test_class_attributes_work_with_a_running_actor(ray_shared):
    a = Foo.options(name=None).remote(Foo.factory(5))
    assert miniray.get(a.get.remote()) == 10


# -- exit_actor ---------------------------------------------------------------------------------

def _marker(tmp_path, name):
    return str(tmp_path / name)


@miniray.remote
class Exiting:
    def __init__(self, atexit_file=None, exit_in_init=False):
        if atexit_file:
            import atexit

            def touch():
                open(atexit_file, "w").close()
            atexit.register(touch)
        if exit_in_init:
            exit_actor()

    def pid(self):
        return os.getpid()

    def exit_after(self, seconds):
        time.sleep(seconds)
        exit_actor()

    def exit_caught(self, after_file):
        try:
            exit_actor()
        except BaseException:
            pass
        open(after_file, "w").close()        # runs: the exception was caught
        return "returned"

    def ping(self):
        return "pong"


@miniray.remote
class AsyncExiting:
    def __init__(self, atexit_file):
        import atexit

        def touch():
            open(atexit_file, "w").close()
        atexit.register(touch)

    async def pid(self):
        return os.getpid()

    async def exit_now(self, after_file):
        exit_actor()
        open(after_file, "w").close()        # never runs

    async def exit_caught(self):
        try:
            exit_actor()
        except miniray.exceptions.AsyncioActorExit:
            pass
        return "returned"

    async def start_exit_task(self, after_file):
        async def later():
            await asyncio.sleep(0.3)
            exit_actor()
            open(after_file, "w").close()    # never runs
        self.task = asyncio.get_running_loop().create_task(later())
        return "started"

    async def ping(self):
        return "pong"


def test_exit_actor_fails_every_call_queued_behind_it(ray_shared, tmp_path):
    a = Exiting.remote(_marker(tmp_path, "atexit"))
    pid = miniray.get(a.pid.remote())
    first = a.exit_after.remote(0.5)
    queued = [a.ping.remote() for _ in range(50)]
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        miniray.get(first, timeout=30)
    for ref in queued:
        with pytest.raises(RayActorError):
            miniray.get(ref, timeout=30)
    assert gone(pid)
    assert os.path.exists(_marker(tmp_path, "atexit"))


def test_exit_actor_ends_the_actor_even_if_the_method_catches_it(ray_shared, tmp_path):
    a = Exiting.remote()
    pid = miniray.get(a.pid.remote())
    with pytest.raises(RayActorError):
        miniray.get(a.exit_caught.remote(_marker(tmp_path, "after")), timeout=30)
    with pytest.raises(RayActorError):
        miniray.get(a.ping.remote(), timeout=30)
    assert gone(pid)


def test_exit_actor_in_the_constructor_ends_the_actor(ray_shared, tmp_path):
    a = Exiting.remote(_marker(tmp_path, "atexit"), exit_in_init=True)
    with pytest.raises(RayActorError):
        miniray.get(a.ping.remote(), timeout=30)
    assert wait_for(lambda: os.path.exists(_marker(tmp_path, "atexit")))


def test_exit_actor_from_an_async_method(ray_shared, tmp_path):
    a = AsyncExiting.remote(_marker(tmp_path, "atexit"))
    pid = miniray.get(a.pid.remote())
    first = a.exit_now.remote(_marker(tmp_path, "after"))
    queued = [a.ping.remote() for _ in range(50)]
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        miniray.get(first, timeout=30)
    for ref in queued:
        with pytest.raises(RayActorError):
            miniray.get(ref, timeout=30)
    assert gone(pid)
    assert os.path.exists(_marker(tmp_path, "atexit"))
    assert not os.path.exists(_marker(tmp_path, "after"))


def test_exit_actor_caught_in_an_async_method_still_ends_the_actor(ray_shared, tmp_path):
    a = AsyncExiting.remote(_marker(tmp_path, "atexit"))
    with pytest.raises(RayActorError):
        miniray.get(a.exit_caught.remote(), timeout=30)
    with pytest.raises(RayActorError):
        miniray.get(a.ping.remote(), timeout=30)


def test_exit_actor_from_an_asyncio_task_of_an_async_actor(ray_shared, tmp_path):
    a = AsyncExiting.remote(_marker(tmp_path, "atexit"))
    pid = miniray.get(a.pid.remote())
    assert miniray.get(a.start_exit_task.remote(_marker(tmp_path, "after"))) == "started"
    assert gone(pid)
    assert os.path.exists(_marker(tmp_path, "atexit"))
    assert not os.path.exists(_marker(tmp_path, "after"))
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        miniray.get(a.ping.remote(), timeout=30)


def test_exit_actor_outside_an_actor_is_a_type_error(ray_shared):
    with pytest.raises(TypeError, match="non-actor worker"):
        exit_actor()

    @miniray.remote
    def task():
        exit_actor()
    with pytest.raises(TypeError, match="non-actor worker"):
        miniray.get(task.remote())


# -- sys.exit in an actor ------------------------------------------------------------------------

@miniray.remote
class Quitter:
    def __init__(self, counter=None, exit_in_init=False):
        self.counter = counter
        if exit_in_init:
            import sys
            sys.exit(3)

    def pid(self):
        return os.getpid()

    def quit(self, code=None):
        import sys
        if self.counter:
            with open(self.counter, "a") as f:
                f.write("x")
        sys.exit(code)


def test_sys_exit_ends_the_actor_process_without_restarts(ray_shared):
    a = Quitter.remote()
    pid = miniray.get(a.pid.remote())
    with pytest.raises(ActorDiedError, match="exited with code 3"):
        miniray.get(a.quit.remote(3), timeout=30)
    with pytest.raises(ActorDiedError):
        miniray.get(a.pid.remote(), timeout=30)
    assert gone(pid)


def test_sys_exit_restarts_within_max_restarts_and_retries_within_max_task_retries(
        ray_shared, tmp_path):
    counter = str(tmp_path / "runs")
    a = Quitter.options(max_restarts=2, max_task_retries=1).remote(counter)
    pid = miniray.get(a.pid.remote())
    # Run, exit, restart, retried once, exit again, restart: no retry left.
    with pytest.raises(ActorDiedError):
        miniray.get(a.quit.remote(), timeout=60)
    assert open(counter).read() == "xx"
    pid2 = miniray.get(a.pid.remote(), timeout=60)
    assert pid2 != pid
    # No restart left: the next exit ends it, and the call runs once.
    with pytest.raises(ActorDiedError):
        miniray.get(a.quit.remote(), timeout=60)
    assert open(counter).read() == "xxx"
    with pytest.raises(ActorDiedError):
        miniray.get(a.pid.remote(), timeout=30)


def test_sys_exit_in_the_constructor_ends_the_actor(ray_shared):
    a = Quitter.remote(exit_in_init=True)
    with pytest.raises(ActorDiedError):
        miniray.get(a.pid.remote(), timeout=30)


def test_sys_exit_in_threaded_and_async_actors_ends_them(ray_shared):
    @miniray.remote(max_concurrency=3)
    class Threaded:
        def quit(self):
            import sys
            sys.exit(1)

        def ping(self):
            return 1

    @miniray.remote
    class Async:
        async def quit(self):
            import sys
            sys.exit(1)

        async def ping(self):
            return 1

    for cls in (Threaded, Async):
        a = cls.remote()
        assert miniray.get(a.ping.remote()) == 1
        with pytest.raises(ActorDiedError):
            miniray.get(a.quit.remote(), timeout=30)
        with pytest.raises(ActorDiedError):
            miniray.get(a.ping.remote(), timeout=30)


def test_exit_actor_from_a_task_started_by_an_async_constructor(ray_shared, tmp_path):
    atexit_file = _marker(tmp_path, "atexit")

    @miniray.remote
    class ExitsSoon:
        def __init__(self):
            import atexit

            def touch():
                open(atexit_file, "w").close()
            atexit.register(touch)

            async def later():
                await asyncio.sleep(0.2)
                exit_actor()
            # The constructor of an async actor runs on its event loop.
            self.task = asyncio.get_running_loop().create_task(later())

        async def ping(self):
            return "pong"

    a = ExitsSoon.remote()
    assert wait_for(lambda: os.path.exists(atexit_file))
    with pytest.raises(ActorDiedError):
        miniray.get(a.ping.remote(), timeout=30)


def test_sys_exit_in_an_asyncio_task_of_an_async_actor_ends_its_process(ray_shared):
    @miniray.remote
    class Background:
        async def pid(self):
            return os.getpid()

        async def exit_later(self):
            async def later():
                await asyncio.sleep(0.2)
                import sys
                sys.exit(4)
            self.task = asyncio.get_running_loop().create_task(later())

    a = Background.remote()
    pid = miniray.get(a.pid.remote())
    miniray.get(a.exit_later.remote())
    assert gone(pid)
    with pytest.raises(ActorDiedError, match="exited with code 4"):
        miniray.get(a.pid.remote(), timeout=30)
