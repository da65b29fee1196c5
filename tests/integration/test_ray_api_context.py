"""Ray's driver-facing context: what ``init`` returns, joining a node from a
second driver with its token, the runtime context in drivers, tasks and
actors, and the job id a task sees (issue 8)."""
from __future__ import annotations

import asyncio
import json
import os

import pytest

import miniray
from miniray.job_config import JobConfig
from tests.conftest import _stop_shared, assert_clean, run_driver, runtime_pids

SMALL_STORE = 128 * 2**20

# A second driver: joins the node at ADDRESS, runs a task, prints what it saw.
SECOND_DRIVER = """
    import json, miniray
    ctx = miniray.init(address={address!r})

    @miniray.remote
    def where():
        c = miniray.get_runtime_context()
        return c.get_job_id(), c.get_node_id()

    job_in_task, node = miniray.get(where.remote())
    print(json.dumps({{"job": miniray.get_runtime_context().get_job_id(),
                       "job_in_task": job_in_task, "node": node,
                       "address": ctx.address_info["address"]}}))
    miniray.shutdown()
"""


def _second_driver(address, **env):
    out = run_driver(SECOND_DRIVER.format(address=address), env=env)
    return out, (json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0
                 else None)


# -- init() returns Ray's context -----------------------------------------------------------------

def test_init_returns_a_dict_like_context_that_shuts_down_at_with_exit():
    _stop_shared()
    with miniray.init(num_cpus=1, object_store_memory=SMALL_STORE) as ctx:
        pids = runtime_pids()
        assert miniray.is_initialized()
        assert ctx["address"] == ctx.address_info["address"] == ctx.address
        assert ctx.address_info["node_id"] == miniray.get_runtime_context().get_node_id()
        assert ctx.address_info["node_ip_address"] == miniray.util.get_node_ip_address()
        assert ctx.dashboard_url is None
        assert "address" in ctx and dict(ctx)["address"] == ctx["address"]
        assert miniray.get(miniray.put(1)) == 1
        # A second init with ignore_reinit_error gives the same node's context.
        assert miniray.init(ignore_reinit_error=True).address_info == ctx.address_info
    assert not miniray.is_initialized()
    assert_clean(pids)


def test_second_driver_joins_with_the_address_from_the_context(ray_factory):
    ray_factory(num_cpus=2, object_store_memory=SMALL_STORE)
    ctx = miniray.init(ignore_reinit_error=True)
    address = ctx.address_info["address"]
    out, seen = _second_driver(address)
    assert out.returncode == 0, out.stderr
    me = miniray.get_runtime_context()
    assert seen["node"] == me.get_node_id() and seen["address"] == address
    # Jobs are numbered as drivers connect; a task runs in its driver's job.
    assert me.get_job_id() == "01000000"
    assert seen["job"] == seen["job_in_task"] != me.get_job_id()


def test_token_file_is_private_and_removed_at_shutdown(ray_factory):
    ray_factory(num_cpus=1, object_store_memory=SMALL_STORE)
    path = miniray._runtime.current().token_file
    assert path is not None and os.stat(path).st_mode & 0o777 == 0o600
    miniray.shutdown()
    assert not os.path.exists(path)


def test_token_from_env_or_token_file(ray_factory, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIRAY_AUTH_TOKEN", "s3cret-token")
    ray_factory(num_cpus=1, object_store_memory=SMALL_STORE)
    rt = miniray._runtime.current()
    assert rt.token_file is None           # the user's token: nothing written for others
    address = rt.address

    out, seen = _second_driver(address)     # inherits MINIRAY_AUTH_TOKEN
    assert out.returncode == 0, out.stderr

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    out, seen = _second_driver(address, MINIRAY_AUTH_TOKEN="",
                               MINIRAY_AUTH_TOKEN_PATH=str(token_file))
    assert out.returncode == 0, out.stderr

    out, _ = _second_driver(address, MINIRAY_AUTH_TOKEN="wrong")
    assert out.returncode != 0 and "ConnectionError" in out.stderr

    # No token anywhere (an empty cluster dir: no host token file either).
    nowhere = dict(MINIRAY_AUTH_TOKEN="", MINIRAY_CLUSTER_DIR=str(tmp_path / "empty"))
    out, _ = _second_driver(address, **nowhere)
    assert out.returncode != 0 and "MINIRAY_AUTH_TOKEN" in out.stderr

    out, _ = _second_driver(address, **nowhere,
                            MINIRAY_AUTH_TOKEN_PATH=str(tmp_path / "missing"))
    assert out.returncode != 0 and "MINIRAY_AUTH_TOKEN_PATH" in out.stderr


def test_connecting_with_resources_is_refused(ray_factory):
    ray_factory(num_cpus=1, object_store_memory=SMALL_STORE)
    address = miniray._runtime.current().address
    out = run_driver(f"import miniray; miniray.init(address={address!r}, num_cpus=4)")
    assert out.returncode != 0 and "must not be provided" in out.stderr


def test_job_config_namespace(ray_factory):
    ray_factory(num_cpus=1, object_store_memory=SMALL_STORE,
                job_config=JobConfig(ray_namespace="from-job-config"))
    assert miniray.get_runtime_context().namespace == "from-job-config"


# -- get_runtime_context() ------------------------------------------------------------------------

def test_get_runtime_context_before_init_starts_a_node():
    _stop_shared()
    assert not miniray.is_initialized()
    try:
        ctx = miniray.get_runtime_context()
        pids = runtime_pids()
        assert miniray.is_initialized()
        assert ctx.get_job_id() == "01000000"
    finally:
        miniray.shutdown()
    assert_clean(pids)


def test_driver_context_has_rays_keys_only(ray_shared):
    ctx = miniray.get_runtime_context()
    assert set(ctx.get()) == {"job_id", "node_id", "namespace"}
    assert ctx.get_task_id() is None and ctx.get_task_name() is None
    assert ctx.get_task_function_name() is None and ctx.get_assigned_resources() == {}
    with pytest.raises(RuntimeError, match="only available in an actor"):
        ctx.current_actor


@miniray.remote
def task_context():
    c = miniray.get_runtime_context()
    return {"name": c.get_task_name(), "function": c.get_task_function_name(),
            "resources": c.get_assigned_resources(), "keys": sorted(c.get()),
            "job": c.get_job_id(), "task": c.get_task_id()}


def test_task_context(ray_shared):
    seen = miniray.get(task_context.remote())
    assert seen["name"] == "task_context"
    assert seen["function"] == f"{__name__}.task_context"
    assert seen["resources"] == {"CPU": 1.0}
    assert seen["keys"] == ["job_id", "namespace", "node_id", "task_id"]
    assert seen["job"] == miniray.get_runtime_context().get_job_id()
    assert seen["task"]
    named = miniray.get(task_context.options(name="my-step", num_cpus=0.5).remote())
    assert named["name"] == "my-step" and named["resources"] == {"CPU": 0.5}


def test_job_id_of_a_nested_task_is_the_drivers(ray_shared):
    @miniray.remote
    def outer():
        inner = miniray.get(task_context.remote())
        return miniray.get_runtime_context().get_job_id(), inner["job"]
    assert miniray.get(outer.remote()) == (miniray.get_runtime_context().get_job_id(),) * 2


@miniray.remote
class Introspect:
    def __init__(self):
        self.created_as = miniray.get_runtime_context().get_task_name()

    def context(self):
        c = miniray.get_runtime_context()
        return {"created_as": self.created_as, "name": c.get_task_name(),
                "function": c.get_task_function_name(), "actor": c.get_actor_id(),
                "keys": sorted(c.get()), "restarted": c.was_current_actor_reconstructed}

    def me(self):
        return miniray.get_runtime_context().current_actor

    def echo(self, x):
        return x


def test_actor_context_and_current_actor(ray_shared):
    a = Introspect.remote()
    seen = miniray.get(a.context.remote())
    assert seen["created_as"] == "Introspect.__init__"
    assert seen["name"] == "Introspect.context"
    assert seen["function"] == f"{__name__}.Introspect.context"
    assert seen["actor"] == a._actor_id.hex()
    assert seen["keys"] == ["actor_id", "job_id", "namespace", "node_id", "task_id"]
    assert seen["restarted"] is False
    me = miniray.get(a.me.remote())
    assert me._actor_id == a._actor_id
    assert miniray.get(me.echo.remote(5)) == 5


# -- ObjectRef.as_future, named actors, node address ----------------------------------------------

def test_as_future_is_an_asyncio_future(ray_shared):
    refs = [miniray.put(i) for i in range(3)]

    async def main():
        futs = [r.as_future() for r in refs]
        assert all(isinstance(f, asyncio.Future) for f in futs)
        return await asyncio.gather(*futs)
    assert asyncio.run(main()) == [0, 1, 2]
    assert miniray.ObjectID is miniray.ObjectRef


def test_list_named_actors(ray_shared):
    a = Introspect.options(name="listed-a").remote()
    b = Introspect.options(name="listed-b", namespace="elsewhere").remote()
    miniray.get([a.echo.remote(1), b.echo.remote(1)])
    names = miniray.util.list_named_actors()
    assert "listed-a" in names and "listed-b" not in names
    everywhere = miniray.util.list_named_actors(all_namespaces=True)
    assert {"name": "listed-b", "namespace": "elsewhere"} in everywhere
    assert all(set(d) == {"name", "namespace"} for d in everywhere)
    miniray.kill(a)
    miniray.kill(b)


def test_node_ip_address_matches_nodes(ray_shared):
    ip = miniray.util.get_node_ip_address()
    assert ip == miniray.nodes()[0]["NodeManagerAddress"]
    assert f"node:{ip}" in miniray.cluster_resources()
