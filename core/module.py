"""A small ViUR-style module layer on Flask.

A :class:`Module` groups request handlers: each method marked :func:`exposed` answers under the
module's path (``/invoices/close_month``). Module instances are assembled into one
:class:`ModuleTree` (ViUR's "main app"), which the task layer searches to run deferred and
periodic methods on the live instance that is mounted at a path.

Path segments after the method name become positional arguments, query-string and form fields
become keyword arguments: ``/invoices/view/42?full=1`` calls ``view("42", full="1")``.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

F = TypeVar("F", bound=Callable[..., Any])

_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def exposed(func: F | None = None, *, methods: tuple[str, ...] = ("GET", "POST"), raw: bool = False) -> Any:
    """Mark a module method as reachable over HTTP (``@exposed`` or ``@exposed(methods=(...))``).

    With ``raw=True`` the method gets only the path segments; it reads the request itself
    (the task routes do, so a task body is never parsed as a form).
    """
    def mark(f: F) -> F:
        f.exposed_methods = tuple(m.upper() for m in methods)  # type: ignore[attr-defined]
        f.exposed_raw = raw  # type: ignore[attr-defined]
        return f
    return mark(func) if func is not None else mark


class Module:
    """Base of every module. ``module_name``/``module_path`` are set when the tree mounts it."""

    def __init__(self, module_name: str, module_path: str) -> None:
        self.module_name = module_name
        self.module_path = module_path

    @property
    def moduleName(self) -> str:  # noqa: N802 - ViUR's name
        return self.module_name

    @property
    def modulePath(self) -> str:  # noqa: N802 - ViUR's name
        return self.module_path

    def exposed_methods(self) -> Iterator[tuple[str, Callable[..., Any], tuple[str, ...]]]:
        """(name, bound method, HTTP methods) for every exposed method of this module."""
        for name in dir(type(self)):
            if name.startswith("_"):
                continue
            attr = inspect.getattr_static(type(self), name)
            func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            methods = getattr(func, "exposed_methods", None)
            if methods:
                yield name, getattr(self, name), methods

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at /{self.module_path}>"


class ModuleTree:
    """Every mounted module instance by its path; the app's single source of live instances."""

    def __init__(self, modules: Mapping[str, type[Module] | Module]) -> None:
        self._by_path: dict[str, Module] = {}
        for path, module in modules.items():
            self.mount(path, module)

    def mount(self, path: str, module: type[Module] | Module) -> Module:
        path = path.strip("/")
        if not _PATH_RE.match(path):
            raise ValueError(f"invalid module path {path!r}")
        if path in self._by_path:
            raise ValueError(f"a module is already mounted at /{path}")
        instance = module(path.rsplit("/", 1)[-1], path) if isinstance(module, type) else module
        if not isinstance(instance, Module):
            raise TypeError(f"/{path}: {instance!r} is not a Module")
        instance.module_name, instance.module_path = path.rsplit("/", 1)[-1], path
        self._by_path[path] = instance
        return instance

    def get(self, path: str) -> Module | None:
        return self._by_path.get(path.strip("/"))

    def __getitem__(self, path: str) -> Module:
        found = self.get(path)
        if found is None:
            raise KeyError(path)
        return found

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path.strip("/") in self._by_path

    def __iter__(self) -> Iterator[Module]:
        return iter(self._by_path.values())

    def items(self) -> Iterator[tuple[str, Module]]:
        return iter(self._by_path.items())

    def path_of(self, instance: object) -> str | None:
        """The path ``instance`` is mounted at, if it is a live instance of this tree."""
        path = getattr(instance, "module_path", None)
        if isinstance(path, str) and self._by_path.get(path) is instance:
            return path
        return None

    def instances_of(self, cls: type) -> list[Module]:
        """Every mounted instance of ``cls`` (a class mounted twice gives two)."""
        return [m for m in self._by_path.values() if isinstance(m, cls)]

    def register_routes(self, app: Flask) -> None:
        """Add a URL rule for every exposed method of every module."""
        for path, module in self._by_path.items():
            for name, handler, methods in module.exposed_methods():
                endpoint = f"{path.replace('/', '.')}.{name}"
                view = _make_view(handler)
                if name == "index":
                    app.add_url_rule(f"/{path}" if path != "index" else "/", endpoint + ".root",
                                     view, methods=list(methods), defaults={"rest": ""})
                app.add_url_rule(f"/{path}/{name}", endpoint, view, methods=list(methods), defaults={"rest": ""})
                app.add_url_rule(f"/{path}/{name}/<path:rest>", endpoint + ".args", view, methods=list(methods))


def _make_view(handler: Callable[..., Any]) -> Callable[..., ResponseReturnValue]:
    if getattr(handler, "exposed_raw", False):
        def raw_view(rest: str) -> ResponseReturnValue:
            return handler(*[a for a in rest.split("/") if a])  # type: ignore[no-any-return]

        raw_view.__name__ = getattr(handler, "__name__", "view")
        return raw_view
    signature = inspect.signature(handler)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    names = {n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = [n for n, p in signature.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]

    def view(rest: str) -> ResponseReturnValue:
        args = [a for a in rest.split("/") if a] if rest else []
        # A path segment fills its parameter; a field of the same name must not collide with it.
        taken = set(positional[:len(args)])
        kwargs = {k: v for k, v in {**request.args.to_dict(), **request.form.to_dict()}.items()
                  if (accepts_any or k in names) and k not in taken}
        try:
            signature.bind(*args, **kwargs)
        except TypeError:
            abort(404)  # the request does not fit the handler: too many or too few arguments
        result = handler(*args, **kwargs)
        if isinstance(result, (dict, list)):
            return jsonify(result)
        return result  # type: ignore[no-any-return]

    view.__name__ = getattr(handler, "__name__", "view")
    return view
