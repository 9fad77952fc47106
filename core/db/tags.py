"""The tagged-JSON form of Datastore keys (``~k``), entities (``~e``) and geo points (``~g``).

The tags are given the classes they build (``core.db``'s ``Key`` and ``Entity``, the library's
``GeoPoint``) and the library's classes they accept, so this room imports neither ``core.db`` nor
Google Cloud: ``core.db`` makes them and registers them into :mod:`core.json` when it is imported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.json import JSONTag, Nested

if TYPE_CHECKING:
    # The library's classes: ``core.db``'s subclass them and registers these tags with its own.
    from google.cloud.datastore import Entity, Key


def _expect(payload: Any, cls: type) -> Any:
    if type(payload) is not cls:
        raise ValueError(f"expected {cls.__name__}, got {type(payload).__name__}")
    return payload


class KeyTag(JSONTag):
    """``~k``: the URL-safe string when it round-trips exactly, else ``[project, namespace, database, path]``."""

    key = "~k"

    def __init__(self, key_class: Any, library_class: type) -> None:
        # ``key_class`` is ``core.db.Key`` (with ``from_library`` / ``from_urlsafe``), passed in by
        # ``core.db``: this room cannot import it back without a cycle.
        self.key_class, self.library_class = key_class, library_class
        self.types = (key_class, library_class)

    def check(self, value: Any) -> bool:
        return isinstance(value, self.library_class)

    def to_json(self, value: Any, nested: Nested | None = None) -> Any:
        flat_path = value.flat_path
        if not value.is_partial and all(flat_path[1::2]) and not value.database and value.namespace != "":
            try:
                return self.key_class.from_library(value).to_urlsafe()
            except Exception:  # noqa: BLE001 - e.g. a name the key protobuf cannot hold; parts still work
                pass
        return [value.project, value.namespace, value.database, list(flat_path)]

    def to_python(self, payload: Any) -> Key:
        if type(payload) is str:
            return self.key_class.from_urlsafe(payload)
        project, namespace, database, flat_path = _expect(payload, list)
        return self.key_class(*_expect(flat_path, list), project=project, namespace=namespace, database=database)


class EntityTag(JSONTag):
    """``~e``: ``[key or null, {properties}]``, plus the sorted names excluded from indexes if any."""

    key = "~e"

    def __init__(self, entity_class: type[Entity], library_class: type, keys: KeyTag) -> None:
        self.entity_class, self.library_class, self.keys = entity_class, library_class, keys
        self.types = (entity_class, library_class)

    def check(self, value: Any) -> bool:
        return isinstance(value, self.library_class)

    def to_json(self, value: Any, nested: Nested) -> Any:
        key = None if value.key is None else self.keys.to_json(value.key)
        properties = nested.mapping(value)
        excluded = sorted(value.exclude_from_indexes)
        return [key, properties, excluded] if excluded else [key, properties]

    def to_python(self, payload: Any) -> Entity:
        key, properties, *rest = _expect(payload, list)
        if len(rest) > 1:
            raise ValueError("too many items")
        excluded = _expect(rest[0], list) if rest else ()
        entity = self.entity_class(None if key is None else self.keys.to_python(key), exclude_from_indexes=excluded)
        entity.update(_expect(properties, dict))
        return entity


class GeoPointTag(JSONTag):
    """``~g``: ``[latitude, longitude]`` of a ``google.cloud.datastore.helpers.GeoPoint``."""

    key = "~g"

    def __init__(self, geo_point_class: type) -> None:
        self.geo_point_class = geo_point_class
        self.types = (geo_point_class,)

    def check(self, value: Any) -> bool:
        return isinstance(value, self.geo_point_class)

    def to_json(self, value: Any, nested: Nested) -> Any:
        return [nested.value(value.latitude), nested.value(value.longitude)]

    def to_python(self, payload: Any) -> Any:
        latitude, longitude = _expect(payload, list)
        if not all(type(part) in (float, int) for part in (latitude, longitude)):
            raise ValueError("latitude and longitude are numbers")
        return self.geo_point_class(float(latitude), float(longitude))
