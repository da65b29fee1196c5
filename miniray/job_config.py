"""``JobConfig``: a driver's job settings, passed as ``init(job_config=...)``.

A plain class with Ray's common fields, so Ray programs that build one run
unchanged.  What miniray does with each:

* ``ray_namespace``: the job's namespace when ``init`` gets no ``namespace``.
* ``metadata``: kept (``get_runtime_context()``'s runtime keeps the config);
  miniray has no job table to show it in.
* ``runtime_env``: accepted and not applied, like ``init(runtime_env=...)``:
  workers run in the driver's environment and import its ``sys.path``.
* ``default_actor_lifetime``: "non_detached" (the default) only; "detached"
  is refused at ``init`` (pass ``lifetime="detached"`` to the actors that
  need it).
* ``jvm_options`` / ``code_search_path``: Java and code search paths are not
  supported; a non-empty value is refused at ``init``.
"""
from __future__ import annotations

import json

__all__ = ["JobConfig"]

_LIFETIMES = ("detached", "non_detached")


class JobConfig:
    """Ray's job configuration (see the module docstring for what applies)."""

    def __init__(self, jvm_options=None, code_search_path=None, runtime_env=None,
                 _client_job=False, metadata=None, ray_namespace=None,
                 default_actor_lifetime="non_detached", _py_driver_sys_path=None):
        self.jvm_options = list(jvm_options or [])
        self.code_search_path = list(code_search_path or [])
        self.runtime_env = None
        self.set_runtime_env(runtime_env)
        self.client_job = _client_job
        self.metadata = dict(metadata or {})
        self.ray_namespace = None
        self.set_ray_namespace(ray_namespace)
        self.default_actor_lifetime = "non_detached"
        self.set_default_actor_lifetime(default_actor_lifetime)
        self.py_driver_sys_path = list(_py_driver_sys_path or [])

    def set_metadata(self, key: str, value: str) -> None:
        self.metadata[key] = value

    def set_ray_namespace(self, ray_namespace) -> None:
        if ray_namespace is not None and not isinstance(ray_namespace, str):
            raise TypeError(f"ray_namespace must be None or a str, got "
                            f"{type(ray_namespace).__name__}: {ray_namespace!r}")
        self.ray_namespace = ray_namespace

    def set_runtime_env(self, runtime_env, validate: bool = False) -> None:
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise TypeError(f"runtime_env must be a dict or None, got "
                            f"{type(runtime_env).__name__}")
        self.runtime_env = dict(runtime_env) if runtime_env else None

    def set_default_actor_lifetime(self, default_actor_lifetime: str) -> None:
        if default_actor_lifetime not in _LIFETIMES:
            raise ValueError(f"default_actor_lifetime must be one of {_LIFETIMES}, got "
                             f"{default_actor_lifetime!r}")
        self.default_actor_lifetime = default_actor_lifetime

    def check_supported(self) -> None:
        """Refuse, at ``init``, what miniray would otherwise silently ignore."""
        if self.default_actor_lifetime != "non_detached":
            raise ValueError(
                "JobConfig(default_actor_lifetime='detached') is not supported by miniray: "
                "pass lifetime='detached' in .options() of the actors that must outlive "
                "their driver.")
        if self.jvm_options or self.code_search_path:
            raise ValueError(
                "JobConfig(jvm_options=..., code_search_path=...) is not supported by "
                "miniray (no Java workers; Python workers import the driver's sys.path): "
                "add the directories to sys.path (or PYTHONPATH) before init().")

    def _to_dict(self) -> dict:
        return {"jvm_options": self.jvm_options, "code_search_path": self.code_search_path,
                "runtime_env": self.runtime_env, "client_job": self.client_job,
                "metadata": self.metadata, "ray_namespace": self.ray_namespace,
                "default_actor_lifetime": self.default_actor_lifetime,
                "py_driver_sys_path": self.py_driver_sys_path}

    def to_json(self) -> str:
        return json.dumps(self._to_dict())

    @classmethod
    def from_json(cls, job_config_json) -> "JobConfig":
        """A JobConfig from a dict or its JSON text (Ray's keys)."""
        data = json.loads(job_config_json) if isinstance(job_config_json, str) \
            else dict(job_config_json)
        return cls(jvm_options=data.get("jvm_options"),
                   code_search_path=data.get("code_search_path"),
                   runtime_env=data.get("runtime_env"),
                   _client_job=data.get("client_job", False),
                   metadata=data.get("metadata"),
                   ray_namespace=data.get("ray_namespace"),
                   default_actor_lifetime=data.get("default_actor_lifetime", "non_detached"),
                   _py_driver_sys_path=data.get("py_driver_sys_path"))

    def __eq__(self, other):
        return isinstance(other, JobConfig) and self._to_dict() == other._to_dict()

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self._to_dict().items() if v)
        return f"JobConfig({fields})"
