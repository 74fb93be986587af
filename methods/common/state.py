"""A fitted method's state, captured generically: the default behind ``Method.save_state`` and
``Method.from_state`` (flag_bench/models.py writes it as a saved-model folder).

The fitted object graph (the method's ``__dict__`` less what ``__init__`` rebuilds and what
cannot travel) is pickled as a *skeleton* in which every numeric numpy array and every torch
tensor is a persistent id; the arrays themselves travel in one safetensors file. A tensor (or
array) referenced twice is stored once and comes back as one object.

The skeleton is read by ``restricted_loads``: a model folder may come from another lab, so
unpickling is a trust boundary. Only classes are resolved (never a function a file names), from
modules under ``flag_bench.methods.`` and ``torch.nn.modules.`` plus the few containers and numpy,
torch and sklearn types the built-in methods hold; instances are rebuilt
the way pickle rebuilds plain instances (``__new__`` without arguments, then ``__setstate__`` or
the instance dict), never by calling a class with arguments the file chose, except the handful
of value types in ``_safe_calls()`` whose arguments are checked to be plain values.
"""

from __future__ import annotations

import enum
import io
import pickle
import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flag_bench.errors import UserError

if TYPE_CHECKING:
    from flag_bench.methods.base import Method

STATE_FORMAT = 1
# set again by Method.__init__ from the saved config, seed and device
REBUILT = ("config", "seed", "device", "progress_hook")
# a module (or package) prefix a saved class may live in; the class's own __module__ must match too,
# so a name another module imported into a flag_bench module's namespace is not reachable. The
# methods' own package only: a class of the harness (the store, the cluster engines, the tracker)
# rebuilt with a state a file chose is a gadget the method's code could then call
ALLOWED_MODULE_PREFIXES = ("flag_bench.methods.", "torch.nn.modules.")
# modules the loader may import to find a class (the rest must already be loaded): importing runs
# a module's top level, so never a __main__ (flag_bench.cli.__main__ runs the command line)
IMPORTABLE_PREFIXES = ("flag_bench.methods.",)
# single classes a built-in method's fitted state holds, outside those modules
ALLOWED_CLASSES = frozenset({
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("builtins", "object"),
    ("numpy", "dtype"),
    ("torch", "device"), ("torch", "Size"),
    # the knn control's fitted index (brute force: its training points, no tree)
    ("sklearn.neighbors._unsupervised", "NearestNeighbors"),
})
# numpy scalars pickle through this function: scalar(dtype, raw bytes)
_NUMPY_SCALAR = (("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"))
_RECONSTRUCTOR = ("copyreg", "_reconstructor")
# numpy array dtypes that travel in the safetensors file (bool, ints, unsigned, floats)
_TENSOR_KINDS = "biuf"


class NotSupported(UserError):
    """Saving (or loading) is not supported for this method, or this state cannot be saved."""


@dataclass(frozen=True)
class MethodState:
    """What a fitted method saves: named CPU tensors (one safetensors file), JSON-able ``meta``,
    and the pickled ``skeleton`` that says where each tensor goes. A plugin that overrides
    ``save_state`` fills these as it likes and reads them back in its ``from_state``."""

    tensors: Mapping[str, Any]  # name -> torch.Tensor on the CPU, contiguous, sharing no memory
    meta: Mapping[str, Any] = field(default_factory=dict)
    skeleton: bytes = b""


# -- who may save ----------------------------------------------------------------------------
def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _overrides(cls: type, name: str) -> bool:
    """Whether ``cls`` (or a base between it and Method) defines hook ``name`` itself."""
    from flag_bench.methods.base import Method

    owner = next((k for k in cls.__mro__ if name in vars(k)), Method)
    return owner is not Method


_HOW = " (see Method.save_state in flag_bench/methods/base.py)"


def saving_refusal(cls: type, name: str | None = None) -> str | None:
    """Why method class ``cls`` cannot be saved, as one line; None when it can. A built-in (a class
    of the flag_bench package) saves through the generic default; a plugin must implement both
    hooks (its classes are outside what the restricted loader resolves); the truth-receiving
    built-ins (oracles, truth nulls) predict from the test truth, so a saved one predicts nothing."""
    from flag_bench.catalog import granted_truth

    label = name or getattr(getattr(cls, "card", None), "name", cls.__name__)
    if granted_truth(cls):
        return (f"method {label} is computed from the test truth by the harness (an oracle or truth null): "
                "a saved one could not predict on a new slide; drop it from a --save-models run")
    save, load = _overrides(cls, "save_state"), _overrides(cls, "from_state")
    if save and load:
        return None
    if save != load:
        return (f"method {label} (module {cls.__module__}) implements only "
                f"{'save_state' if save else 'from_state'}: implement both{_HOW}")
    if not cls.__module__.startswith("flag_bench."):
        return (f"method {label} (module {cls.__module__}) does not implement save_state/from_state: saving is "
                f"not supported for it; implement both{_HOW}")
    return None


def require_savable(cls: type, name: str | None = None) -> None:
    why = saving_refusal(cls, name)
    if why:
        raise NotSupported(why)


# -- capture ---------------------------------------------------------------------------------
_FUNCTION_TYPES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.LambdaType)


def _travels(value: Any) -> bool:
    import functools

    return not isinstance(value, (*_FUNCTION_TYPES, functools.partial))


class _Store:
    """The tensors the skeleton names, each stored once (a tensor referenced twice is one entry)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device_type = str(device).partition(":")[0]  # the fitted method's device
        self.tensors: dict[str, Any] = {}
        self.ids: dict[int, tuple] = {}
        self.keep: list[Any] = []  # the originals stay alive, so id() is not reused mid-capture

    def pid(self, obj: Any) -> tuple | None:
        seen = self.ids.get(id(obj))
        if seen is not None:
            return seen
        import numpy as np

        torch = sys.modules.get("torch")
        if isinstance(obj, np.ndarray):
            pid = self._array(obj, np)
        elif torch is not None and isinstance(obj, torch.Tensor):
            pid = self._tensor(obj, torch)
        else:
            return None
        self.ids[id(obj)] = pid
        self.keep.append(obj)
        return pid

    def _key(self) -> str:
        return f"t{len(self.tensors)}"

    def _array(self, a, np) -> tuple:
        kind = a.dtype.kind
        if kind in "US":  # gene names and the like: plain values inside the skeleton
            return ("strings", a.dtype.str, tuple(a.shape), tuple(a.ravel().tolist()))
        if kind == "O":  # each element pickled (and checked on load) like any other value
            return ("objects", tuple(a.shape), tuple(a.ravel().tolist()))
        if kind not in _TENSOR_KINDS:
            raise NotSupported(f"a numpy array of dtype {a.dtype} cannot be saved (numeric, bool and string "
                               "arrays can)")
        import torch

        order = "F" if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous else "C"
        native = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
        key = self._key()
        self.tensors[key] = torch.from_numpy(native.copy())
        # the layout is kept: BLAS takes other paths on a Fortran-ordered matrix, so the numbers
        # of a product could differ in the last bit
        return ("ndarray", key, a.dtype.str, order)

    def _tensor(self, t, torch) -> tuple:
        key = self._key()
        self.tensors[key] = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        kind = "parameter" if isinstance(t, torch.nn.Parameter) else "tensor"
        # a tensor on the method's device goes to the device the model is loaded on; one the method
        # kept on the CPU while fitted elsewhere stays there
        follows = t.device.type == self.device_type or t.device.type != "cpu"
        return ("tensor", key, kind, bool(t.requires_grad), follows)


class _Pickler(pickle.Pickler):
    def __init__(self, file, store: _Store):
        super().__init__(file, protocol=4)
        self.store = store

    def persistent_id(self, obj: Any) -> Any:  # noqa: D401  (pickle's hook)
        return self.store.pid(obj)


def capture(method: Method) -> MethodState:
    """The generic state of a fitted ``method``: its attributes less those ``__init__`` rebuilds
    (config, seed, device) and the callables that cannot travel (the progress hook, lambdas)."""
    attrs = {k: v for k, v in vars(method).items() if k not in REBUILT}
    dropped = sorted(k for k, v in attrs.items() if not _travels(v))
    attrs = {k: v for k, v in attrs.items() if k not in dropped}
    store = _Store(getattr(method, "device", "cpu"))
    buf = io.BytesIO()
    try:
        _Pickler(buf, store).dump(attrs)
    except NotSupported as exc:
        raise NotSupported(f"method {method.card.name}: {_which(attrs, exc)}: {exc}") from None
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise NotSupported(f"method {method.card.name}: {_which(attrs, exc)} cannot be saved ({exc}); implement "
                           "save_state/from_state for it") from None
    meta = {"state_format": STATE_FORMAT, "generic": True, "class": class_path(type(method)),
            "attributes": sorted(attrs), "dropped": dropped, "n_tensors": len(store.tensors)}
    return MethodState(tensors=store.tensors, meta=meta, skeleton=buf.getvalue())


def _which(attrs: Mapping[str, Any], exc: BaseException) -> str:
    """The attribute whose value fails to pickle, for the message."""
    for k, v in attrs.items():
        try:
            _Pickler(io.BytesIO(), _Store()).dump(v)
        except Exception:  # noqa: BLE001  (any failure names the attribute)
            return f"attribute {k} ({type(v).__module__}.{type(v).__qualname__})"
    return "its state"


def restore(cls: type[Method], state: MethodState, config: Any, *, seed: int, device: str,
            source: str = "skeleton.pickle") -> Method:
    """A fresh ``cls(config, seed, device)`` given back the attributes ``capture`` saved, its
    tensors on ``device``."""
    attrs = restricted_loads(state.skeleton, state.tensors, device=device, source=source)
    if not isinstance(attrs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in attrs):
        raise UserError(f"{source}: does not hold a method's attributes (a dict of names)")
    clash = sorted(set(attrs) & set(REBUILT))
    if clash:
        raise UserError(f"{source}: sets {', '.join(clash)}, which come from config.json and model.json only")
    method = cls(config, seed=seed, device=device)
    vars(method).update(attrs)
    return method


# -- the restricted loader --------------------------------------------------------------------
class Refused(UserError):
    """A skeleton asked for something a saved model may not do."""


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return True
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return False


def _check_args(kind: str) -> Callable[[tuple], bool]:
    def ok(args: tuple) -> bool:
        import numpy as np

        if kind == "empty":
            return args == ()
        if kind == "iterable":  # set([...]), frozenset([...]): already-loaded (checked) values
            return len(args) <= 1 and all(isinstance(a, (list, tuple, set, frozenset)) for a in args)
        if kind == "plain":
            return _plain(args)
        if kind == "dtype":
            return len(args) == 3 and isinstance(args[0], str) and all(isinstance(a, bool) for a in args[1:])
        if kind == "scalar":
            return len(args) == 2 and isinstance(args[0], np.dtype) and isinstance(args[1], bytes)
        raise AssertionError(kind)

    return ok


def _safe_calls() -> dict[Any, Callable[[tuple], bool]]:
    """Callables a skeleton may call through REDUCE, each with its argument check: value types
    whose construction from plain values runs nothing else."""
    import collections

    import numpy as np

    calls: dict[Any, Callable[[tuple], bool]] = {
        collections.OrderedDict: _check_args("empty"),
        set: _check_args("iterable"), frozenset: _check_args("iterable"),
        slice: _check_args("plain"), complex: _check_args("plain"),
        np.dtype: _check_args("dtype"),
    }
    for mod, name in _NUMPY_SCALAR:
        fn = _lookup(mod, name)
        if fn is not None:
            calls[fn] = _check_args("scalar")
    torch = sys.modules.get("torch")
    if torch is not None:
        calls[torch.device] = _check_args("plain")
        calls[torch.Size] = lambda args: len(args) == 1 and isinstance(args[0], tuple) and all(
            isinstance(v, int) for v in args[0])
    return calls


def _lookup(module: str, qualname: str) -> Any:
    """``module.qualname`` without calling anything but an import of a methods module (or of one
    of the few named modules) that is not loaded yet; None where it cannot be found."""
    if any(part.startswith("__") for part in (*module.split("."), *qualname.split("."))):
        return None
    mod = sys.modules.get(module)
    if mod is None:
        named = (module, qualname) in ALLOWED_CLASSES or (module, qualname) in _NUMPY_SCALAR
        if not (named or module.startswith(IMPORTABLE_PREFIXES)):
            return None
        try:
            __import__(module)
        except ImportError:
            return None
        mod = sys.modules[module]
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _allowed_class(cls: Any) -> bool:
    if not isinstance(cls, type):
        return False
    if (cls.__module__, cls.__qualname__) in ALLOWED_CLASSES:
        return True
    import numpy as np

    if issubclass(cls, (np.generic, np.dtype)) and cls.__module__.partition(".")[0] == "numpy":
        return True  # scalar types (np.float32) and dtypes (numpy.dtypes.Float32DType instances)
    return cls.__module__.startswith(ALLOWED_MODULE_PREFIXES)


# the pure-Python unpickler: its opcode table can be overridden (the C one's cannot); typed Any,
# as typeshed does not describe its stack and dispatch table
_PythonUnpickler: Any = pickle._Unpickler


class RestrictedUnpickler(_PythonUnpickler):
    """Reads a skeleton written by ``capture``; refuses every global that is not an allowed
    class and every call that is not a plain instance rebuild or one of ``_safe_calls()``."""

    dispatch = dict(_PythonUnpickler.dispatch)

    def __init__(self, file, tensors: Mapping[str, Any], *, device: str, source: str):
        super().__init__(file)
        self.tensors = tensors
        self.device = device
        self.source = source
        self.loaded: dict[tuple, Any] = {}
        self.safe_calls = _safe_calls()

    def refuse(self, what: str) -> Refused:
        return Refused(f"{self.source}: {what}, which a saved model may not do; the file is not a skeleton "
                       "flag-bench wrote (do not load models from sources you do not trust)")

    # -- globals ---------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _RECONSTRUCTOR or (module, name) in _NUMPY_SCALAR:
            fn = _lookup(module, name)
            if fn is not None:
                return fn
        if module == "torch" and "." not in name and not name.startswith("_"):
            import torch

            obj = getattr(torch, name, None)
            if isinstance(obj, torch.dtype):
                return obj
        allowed_place = (module, name) in ALLOWED_CLASSES or module.startswith(ALLOWED_MODULE_PREFIXES) \
            or module == "numpy"
        obj = _lookup(module, name) if allowed_place else None
        if obj is None or not _allowed_class(obj):
            raise self.refuse(f"names {module}.{name}")
        return obj

    # -- tensors -----------------------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and isinstance(pid[0], str)):
            raise self.refuse("holds a malformed tensor reference")
        if pid in self.loaded:
            return self.loaded[pid]
        obj = self._materialise(pid)
        self.loaded[pid] = obj
        return obj

    def _materialise(self, pid: tuple) -> Any:
        import numpy as np

        tag = pid[0]
        try:
            if tag == "strings":
                _, dtype, shape, values = pid
                dt = np.dtype(dtype)
                if dt.kind not in "US" or not all(isinstance(v, (str, bytes)) for v in values):
                    raise ValueError(dtype)
                return np.array(values, dtype=dt).reshape(shape)
            if tag == "objects":
                _, shape, values = pid
                out = np.empty(len(values), dtype=object)
                out[:] = list(values)
                return out.reshape(shape)
            if tag == "ndarray":
                _, key, dtype, order = pid
                dt = np.dtype(dtype)
                if dt.kind not in _TENSOR_KINDS:
                    raise ValueError(dtype)
                arr = self._tensor(key).numpy().astype(dt, copy=True)
                return np.asfortranarray(arr) if order == "F" else arr
            if tag == "tensor":
                import torch

                _, key, kind, requires_grad, follows = pid
                t = self._tensor(key)
                t = t.to(self.device) if follows else t
                if kind == "parameter":
                    return torch.nn.Parameter(t, requires_grad=bool(requires_grad))
                return t.requires_grad_(bool(requires_grad)) if t.is_floating_point() else t
        except (ValueError, TypeError) as exc:
            raise self.refuse(f"holds a malformed {tag} reference ({exc})") from None
        raise self.refuse(f"holds an unknown reference kind {tag!r}")

    def _tensor(self, key: Any) -> Any:
        if not isinstance(key, str) or key not in self.tensors:
            raise UserError(f"{self.source}: names tensor {key!r}, which weights.safetensors does not hold")
        return self.tensors[key]

    # -- instance construction -----------------------------------------------------------------
    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        stack[-1] = self._call(func, args)

    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise self.refuse("calls with malformed arguments")
        if func is _lookup(*_RECONSTRUCTOR):
            # pickle's rebuild of a plain instance of a class with __reduce_ex__ of protocol < 2
            if len(args) == 3 and _allowed_class(args[0]) and args[1] is object and args[2] is None:
                return object.__new__(args[0])
            raise self.refuse("rebuilds an instance other than through object.__new__")
        check = self.safe_calls.get(func) if _hashable(func) else None
        if check is not None and check(args):
            return func(*args)
        if isinstance(func, type) and issubclass(func, enum.Enum) and _allowed_class(func) and _plain(args) \
                and len(args) == 1:
            return func(args[0])  # a member looked up by value
        name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
        raise self.refuse(f"calls {name} with arguments it chose")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if not _allowed_class(cls):
            raise self.refuse(f"builds an instance of {cls!r}")
        if kwargs:
            raise self.refuse(f"builds {cls.__qualname__} with keyword arguments")
        if args == ():
            return cls.__new__(cls)
        # a named tuple (or another tuple subclass) is built from its fields
        if isinstance(cls, type) and issubclass(cls, tuple) and _plain_or_loaded(args):
            return cls.__new__(cls, *args)
        raise self.refuse(f"builds {cls.__qualname__} with arguments it chose")

    def load_build(self) -> None:
        inst = self.stack[-2]  # under the state BUILD applies
        if isinstance(inst, type) or not _allowed_class(type(inst)):
            raise self.refuse(f"sets the state of {type(inst).__qualname__}")
        super().load_build()

    def load_inst(self) -> None:
        raise self.refuse("uses the INST opcode (a class called with arguments)")

    def load_obj(self) -> None:
        raise self.refuse("uses the OBJ opcode (a class called with arguments)")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.OBJ[0]] = load_obj


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _plain_or_loaded(args: tuple) -> bool:
    """Arguments a tuple subclass may be built from: values the skeleton itself produced (plain
    values, or objects this loader already allowed), never a class or function."""
    return not any(isinstance(a, (type, *_FUNCTION_TYPES)) for a in args)


def restricted_loads(data: bytes, tensors: Mapping[str, Any], *, device: str = "cpu",
                     source: str = "skeleton.pickle") -> Any:
    """Unpickle a skeleton through ``RestrictedUnpickler``, tensors taken from ``tensors``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), tensors, device=device, source=source).load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{source}: cannot be read as a model skeleton ({type(exc).__name__}: {exc})") from None
