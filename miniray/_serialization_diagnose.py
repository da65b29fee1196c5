"""Failure-path diagnosis for miniray._serialization.

Nothing here runs on the hot path.  When pickling fails, :func:`failure_message`
walks the object to find the deepest part that fails *by itself* and names
the path to it (``arg 'model' -> .session -> ._lock``).  The same walk,
applied to every part, backs ``inspect_serializability`` and ``tier_of``.

This module imports nothing from miniray: the caller passes ``try_dump``
(pickle one object alone with miniray's pickler, return the error or None)
and the custom-serializer ``registry`` (class -> entry with ``.kind`` and
``.serializer``).  That keeps the import graph one-way.

The walk descends into list/tuple/set/dict values (and dict keys), instance
``__dict__`` attributes and ``__slots__``, the state from a custom
``__reduce_ex__``/``__getstate__``, a by-value function's closure cells,
referenced globals and defaults, a by-value class's attributes, bound
methods, functools.partial, and the value a custom serializer returns.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import sys
import types

__all__ = ["Failure", "failure_message", "load_failure_message", "inspect", "tier_of",
           "own_tier"]

_ATOMS = (int, float, complex, str, bytes, bool, type(None))
_CONTAINERS = (list, tuple, dict, set, frozenset)
_RANK = {"fast": 0, "dict": 1, "reduce": 2, "custom": 3, "cloudpickle": 4}
_MAX_DEPTH = 60          # the walk recurses; stay far from the interpreter's limit
_SHOW_DEPTH = 3          # how deep the report shows parts that are fine
_SHOW_CHILDREN = 8       # how many fine children per node the report lists
_CLASS_DICT_SKIP = frozenset({"__dict__", "__weakref__", "__module__", "__doc__",
                              "__qualname__", "__slots__", "__annotations__",
                              "__slotnames__"})


@dataclasses.dataclass(frozen=True)
class Failure:
    """One part that cannot be serialized."""
    path: str
    type_name: str
    reason: str
    obj: object = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class _Node:
    label: str
    type_name: str
    tier: str
    error: BaseException | None
    children: list = dataclasses.field(default_factory=list)
    hidden: int = 0          # fine children not listed


def type_name(obj_or_cls) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    mod = getattr(cls, "__module__", None)
    qual = getattr(cls, "__qualname__", None) or cls.__name__
    return qual if mod in (None, "builtins") else f"{mod}.{qual}"


def _short(value, limit=40) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type_name(value)}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------
# Tiers
# ---------------------------------------------------------------------------
def _by_reference(obj) -> bool:
    """True when a function/class is pickled as a module attribute lookup."""
    try:
        from cloudpickle.cloudpickle import _should_pickle_by_reference
        return bool(_should_pickle_by_reference(obj))
    except ImportError:  # pragma: no cover - older cloudpickle
        pass
    except Exception:
        return False
    mod = sys.modules.get(getattr(obj, "__module__", None) or "")
    if mod is None or mod.__name__ == "__main__":
        return False
    target = mod
    for part in getattr(obj, "__qualname__", "<>").split("."):
        target = getattr(target, part, None)
    return target is obj


def _dynamic_class(cls) -> bool:
    """A class defined in __main__, in a function, or in a module registered
    with cloudpickle.register_pickle_by_value: it travels by value."""
    if _by_reference(cls):
        return False
    module = getattr(cls, "__module__", None)
    return module == "__main__" or "<locals>" in getattr(cls, "__qualname__", "") or \
        _registered_by_value(module)


def _registered_by_value(module_name) -> bool:
    try:
        import cloudpickle
        return module_name in cloudpickle.list_registry_pickle_by_value()
    except Exception:
        return False


def _is_arrow(obj) -> bool:
    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(obj, (pa.Array, pa.ChunkedArray, pa.Table,
                                               pa.RecordBatch))


def _cloudpickle_dispatch(cls) -> bool:
    import copyreg
    import cloudpickle
    return cls in cloudpickle.Pickler.dispatch_table and cls not in copyreg.dispatch_table


def _default_reduce(cls) -> bool:
    getstate = getattr(cls, "__getstate__", None)
    return (cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and getstate in (None, getattr(object, "__getstate__", None)))


def own_tier(obj, registry) -> str:
    """The mechanism that handles ``obj`` itself (not its parts)."""
    cls = type(obj)
    if cls in registry:
        return "custom"
    if cls in _ATOMS or cls in _CONTAINERS or cls is bytearray:
        return "fast"
    if cls.__name__ == "ObjectRef" and cls.__module__ == "miniray._ids":
        return "fast"
    np = sys.modules.get("numpy")
    if np is not None and cls is np.ndarray:
        return "fast"
    if _is_arrow(obj):
        return "fast"
    if isinstance(obj, (types.FunctionType, type)):
        return "fast" if _by_reference(obj) else "cloudpickle"
    if isinstance(obj, types.BuiltinFunctionType) and \
            isinstance(getattr(obj, "__self__", None), (types.ModuleType, type(None))):
        return "fast"  # a builtin function: saved by name
    if _cloudpickle_dispatch(cls):
        return "cloudpickle"
    if _dynamic_class(cls):
        return "cloudpickle"  # the instance's class travels by value
    if _default_reduce(cls) and hasattr(obj, "__dict__"):
        return "dict"
    return "reduce"


def tier_of(obj, registry) -> str:
    """Own tier, or for a plain container the slowest tier of its contents."""
    worst = own_tier(obj, registry)
    if type(obj) not in _CONTAINERS:
        return worst
    seen = {id(obj)}
    stack = [obj]
    while stack and worst != "cloudpickle":
        cur = stack.pop()
        items = cur.items() if type(cur) is dict else ((None, x) for x in cur)
        for key, value in items:
            for part in (key, value):
                if type(part) in _ATOMS:
                    continue
                if type(part) in _CONTAINERS:
                    if id(part) not in seen:
                        seen.add(id(part))
                        stack.append(part)
                    continue
                tier = own_tier(part, registry)
                if _RANK[tier] > _RANK[worst]:
                    worst = tier
    return worst


# ---------------------------------------------------------------------------
# Children: (label, part) pairs the pickler would descend into
# ---------------------------------------------------------------------------
def _dict_children(d):
    for key, value in d.items():
        if type(key) not in _ATOMS:
            yield f"<key {_short(key)}>", key
        yield f"[{_short(key)}]", value


def _attr_children(obj):
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        for key, value in d.items():
            yield f".{key}", value
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"
            try:
                yield f".{name}", getattr(obj, name)
            except AttributeError:
                pass


def _state_children(state):
    if isinstance(state, dict):
        for key, value in state.items():
            yield f".{key}", value
    elif isinstance(state, tuple) and len(state) == 2 and \
            all(s is None or isinstance(s, dict) for s in state):
        for part in state:  # (__dict__, slots) from the default reduce
            if part:
                for key, value in part.items():
                    yield f".{key}", value
    elif state is not None:
        yield "<state>", state


def _code_names(code, out):
    for name in code.co_names:
        if name not in out:
            out.append(name)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, out)
    return out


def _function_children(fn):
    if _by_reference(fn):
        return
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            yield f"<closure {name!r}>", cell.cell_contents
        except ValueError:  # empty cell
            pass
    for name in _code_names(code, []):
        if name in fn.__globals__:
            yield f"<global {name!r}>", fn.__globals__[name]
    for i, value in enumerate(fn.__defaults__ or ()):
        yield f"<default {i}>", value
    for name, value in (fn.__kwdefaults__ or {}).items():
        yield f"<default {name!r}>", value


def _children(obj, registry):
    cls = type(obj)
    entry = registry.get(cls)
    if entry is not None:
        if entry.kind == "custom":
            try:
                yield "<custom serializer value>", entry.serializer(obj)
            except Exception:
                pass
            return
        if entry.kind == "dict":
            yield from _attr_children(obj)
            return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield f"[{i}]", value
    elif isinstance(obj, dict):
        yield from _dict_children(obj)
        if cls is dict:
            return
    elif isinstance(obj, (set, frozenset)):
        for value in obj:
            yield "<set item>", value
    elif isinstance(obj, types.FunctionType):
        yield from _function_children(obj)
        return
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
        return
    elif isinstance(obj, type):
        if not _by_reference(obj):
            for key, value in list(vars(obj).items()):
                if key not in _CLASS_DICT_SKIP:
                    yield f".{key}", value
        return
    elif isinstance(obj, functools.partial):
        yield ".func", obj.func
        for i, value in enumerate(obj.args):
            yield f".args[{i}]", value
        for key, value in obj.keywords.items():
            yield f".keywords[{key!r}]", value
        return
    if cls in _ATOMS or cls in _CONTAINERS or own_tier(obj, registry) == "fast":
        return
    if _dynamic_class(cls):
        yield f"<class {cls.__qualname__!r}>", cls
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__:
        try:
            rv = obj.__reduce_ex__(5)
        except Exception:
            return
        if not isinstance(rv, tuple):
            return
        if len(rv) > 1 and isinstance(rv[1], tuple):
            for i, arg in enumerate(rv[1]):
                if arg is not cls:
                    yield f"<reduce arg {i}>", arg
        if len(rv) > 2:
            yield from _state_children(rv[2])
        if len(rv) > 3 and rv[3] is not None:
            for i, item in enumerate(rv[3]):
                yield f"[{i}]", item
        if len(rv) > 4 and rv[4] is not None:
            for key, value in rv[4]:
                yield f"[{_short(key)}]", value
    elif not _default_reduce(cls):
        try:
            state = obj.__getstate__()
        except Exception:
            return
        yield from _state_children(state)
    else:
        yield from _attr_children(obj)


# ---------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------
class _Walk:
    def __init__(self, try_dump, registry, first_only):
        self.try_dump = try_dump
        self.registry = registry
        self.first_only = first_only
        self.failures = []
        self.ancestors = set()

    def node(self, obj, label, path, depth, error):
        """Build the report node for ``obj``; ``error`` is its own dump error."""
        try:
            tier = own_tier(obj, self.registry)
        except Exception:
            tier = "reduce"
        node = _Node(label, type_name(obj), tier, error)
        if id(obj) in self.ancestors or depth >= _MAX_DEPTH:
            if error is not None:
                self.failures.append(Failure(path, node.type_name, _reason(error), obj))
            return node
        self.ancestors.add(id(obj))
        try:
            if error is not None:
                self._failing_children(obj, node, path, depth)
            elif not self.first_only and depth < _SHOW_DEPTH:
                self._fine_children(obj, node, path, depth)
        finally:
            self.ancestors.discard(id(obj))
        return node

    def _failing_children(self, obj, node, path, depth):
        try:
            children = list(_children(obj, self.registry))
        except Exception:
            children = []
        found = False
        shown = 0
        for label, child in children:
            if type(child) in _ATOMS:
                continue
            child_error = self.try_dump(child)
            if child_error is None:
                if self.first_only:
                    continue
                if shown >= _SHOW_CHILDREN:
                    node.hidden += 1
                    continue
                shown += 1
            node.children.append(
                self.node(child, label, f"{path} -> {label}", depth + 1, child_error))
            if child_error is not None:
                found = True
                if self.first_only:
                    break
        if not found:  # no part fails alone: this object is the culprit
            self.failures.append(Failure(path, node.type_name, _reason(node.error), obj))

    def _fine_children(self, obj, node, path, depth):
        try:
            children = _children(obj, self.registry)
            for label, child in children:
                if len(node.children) >= _SHOW_CHILDREN or type(child) in _ATOMS:
                    node.hidden += 1  # atoms are always fine: not worth a line
                    continue
                node.children.append(
                    self.node(child, label, f"{path} -> {label}", depth + 1, None))
        except Exception:
            pass


def _reason(error) -> str:
    if error is None:
        return ""
    text = str(error)
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if "recursion" in text.lower():
        reason += "; the object is nested too deeply or refers to itself through a reducer"
    return reason


def failure_message(obj, where, exc, try_dump, registry) -> str:
    """The SerializationError message for ``obj`` failing with ``exc``."""
    walk = _Walk(try_dump, registry, first_only=True)
    walk.node(obj, where, where, 0, exc)
    if walk.failures:
        failure = walk.failures[0]
    else:
        failure = Failure(where, type_name(obj), _reason(exc), obj)
    tname = failure.type_name
    if type(failure.obj) in registry:
        return (f"Could not serialize {where}: {failure.path} is a {tname} whose registered "
                f"custom serializer failed ({failure.reason}). Fix the serializer, or remove "
                f"it with miniray.util.deregister_serializer({tname}).")
    return (f"Could not serialize {where}: {failure.path} is a {tname}, which cannot be "
            f"serialized ({failure.reason}). Keep it inside an actor (@miniray.remote class) "
            f"that creates it, or register a custom serializer with "
            f"miniray.util.register_serializer({tname}, serializer=..., deserializer=...).")


def inspect(obj, name, print_report, try_dump, registry):
    """Backs ``inspect_serializability``: returns ``(ok, failures)``."""
    root = name if name is not None else "obj"
    walk = _Walk(try_dump, registry, first_only=False)
    tree = walk.node(obj, root, root, 0, try_dump(obj))
    ok = tree.error is None
    if print_report:
        lines = [f"Serializability of {root!r}: "
                 + ("OK" if ok else f"FAILED ({len(walk.failures)} part(s) cannot be "
                                    f"serialized)")]
        _render(tree, "", lines)
        for failure in walk.failures:
            lines.append(f"  ! {failure.path}: {failure.type_name}: {failure.reason}")
        print("\n".join(lines))
    return ok, walk.failures


def _render(node, indent, lines):
    mark = "" if node.error is None else "  <-- FAILS"
    lines.append(f"{indent}{node.label}: {node.type_name} [{node.tier}]{mark}")
    for child in node.children:
        _render(child, indent + "    ", lines)
    if node.hidden:
        lines.append(f"{indent}    ... {node.hidden} more part(s), all serializable")


# ---------------------------------------------------------------------------
# Deserialization failures
# ---------------------------------------------------------------------------
_CANT_GET = re.compile(r"Can't get attribute '([^']+)' on <module '([^']+)'")


def load_failure_message(exc) -> str:
    """The SerializationError message for an unpickling error ``exc``."""
    head = "Could not deserialize value: "
    hint = ("A class or function pickled by reference must be importable under the same "
            "module path in the reading process: install its module there or put it on "
            "PYTHONPATH (classes and functions defined in __main__ or inside a function "
            "travel by value and need no import).")
    if isinstance(exc, ModuleNotFoundError):
        return f"{head}module {exc.name!r} is not importable in this process. {hint}"
    text = str(exc)
    match = _CANT_GET.search(text)
    if match:
        return (f"{head}class or function {match.group(1)!r} was not found in module "
                f"{match.group(2)!r} ({type(exc).__name__}: {text}). {hint}")
    if exc.__class__.__name__ == "SerializationError":
        return f"{head}{text}"
    culprit = _innermost_owner(exc)
    where = f" while rebuilding a {culprit}" if culprit else ""
    return f"{head}{type(exc).__name__}{where}: {text}"


def _innermost_owner(exc):
    """Name what was being rebuilt: the innermost frame's ``self``/``cls``
    class (e.g. ``pkg.Cls (in __setstate__)``), else the first function the
    unpickler called (the reconstructor)."""
    owner = first = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        if frame.f_globals.get("__name__") != "miniray._serialization":
            local = frame.f_locals
            this = local.get("self", local.get("cls"))
            if this is not None:
                cls = this if isinstance(this, type) else type(this)
                owner = f"{type_name(cls)} (in {code.co_name})"
            if first is None:
                qual = getattr(code, "co_qualname", code.co_name)
                first = f"{frame.f_globals.get('__name__', '?')}.{qual}"
        tb = tb.tb_next
    if owner:
        return owner
    return f"value (in {first})" if first else None
