"""The feature registry: typed feature views read from the dbt manifest.

Feature definitions live in the dbt YAML (``dbt_project/models/features/_features.yml``): a model is a
feature view when its ``meta.feature_view`` is set, and each of its columns with ``meta.entity`` is a
feature. This module is the single source of truth the online store and the scoring service use, so
offline and online cannot disagree on names, types or versions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from rtml.features.dbt import ensure_manifest, manifest_path

DType = Literal["int64", "float64", "bool", "string"]
DTYPES: frozenset[str] = frozenset({"int64", "float64", "bool", "string"})


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: DType
    description: str
    window: str | None
    entity: str
    owner: str
    version: int
    online: Literal["stored", "request"] = "stored"
    """``stored``: the online table holds it; ``request``: the scorer derives it from stored state."""


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: str
    entity_key: str
    version: int
    description: str
    timestamp_field: str
    relation: str
    """Schema-qualified offline table, e.g. ``features.customer_features``."""
    online_model: str | None
    online_relation: str | None
    features: list[Feature] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @property
    def stored_features(self) -> list[Feature]:
        """Features the online table holds (the others are derived at request time)."""
        return [feature for feature in self.features if feature.online == "stored"]

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"{self.name} has no feature {name!r}")


@dataclass(frozen=True)
class FeatureRegistry:
    views: dict[str, FeatureView]
    manifest_hash: str
    """sha256 of the manifest's model definitions (see ``definitions_hash``): MLflow versions carry it
    for lineage."""

    def view(self, name: str) -> FeatureView:
        return self.views[name]

    def by_entity(self, entity: str) -> FeatureView:
        for view in self.views.values():
            if view.entity == entity:
                return view
        raise KeyError(f"no feature view for entity {entity!r}")

    @property
    def features(self) -> list[Feature]:
        return [feature for view in self.views.values() for feature in view.features]


def _column_meta(column: dict[str, Any]) -> dict[str, Any]:
    # dbt >= 1.10 keeps column meta under config.meta (and mirrors it to meta)
    return {**(column.get("meta") or {}), **((column.get("config") or {}).get("meta") or {})}


def _model_meta(node: dict[str, Any]) -> dict[str, Any]:
    return {**(node.get("meta") or {}), **((node.get("config") or {}).get("meta") or {})}


def registry_from_manifest(manifest: dict[str, Any], manifest_hash: str = "") -> FeatureRegistry:
    models = {
        node["name"]: node
        for node in manifest.get("nodes", {}).values()
        if node.get("resource_type") == "model"
    }
    views: dict[str, FeatureView] = {}
    for node in models.values():
        spec = _model_meta(node).get("feature_view")
        if not spec:
            continue
        features: list[Feature] = []
        for column in node.get("columns", {}).values():
            meta = _column_meta(column)
            if "entity" not in meta:
                continue
            dtype = str(meta.get("dtype", ""))
            if dtype not in DTYPES:
                raise ValueError(f"{node['name']}.{column['name']}: unknown dtype {dtype!r}")
            if not column.get("description"):
                raise ValueError(f"{node['name']}.{column['name']}: a feature needs a description")
            features.append(
                Feature(
                    name=column["name"],
                    dtype=dtype,  # type: ignore[arg-type]
                    description=" ".join(str(column["description"]).split()),
                    window=meta.get("window"),
                    entity=str(meta["entity"]),
                    owner=str(meta.get("owner", "")),
                    version=int(meta.get("version", 1)),
                    online=meta.get("online", "stored"),
                )
            )
        online_model = spec.get("online_model")
        online_node = models.get(online_model) if online_model else None
        views[spec.get("name", node["name"])] = FeatureView(
            name=spec.get("name", node["name"]),
            entity=spec["entity"],
            entity_key=spec["entity_key"],
            version=int(spec.get("version", 1)),
            description=" ".join(str(node.get("description", "")).split()),
            timestamp_field=spec.get("timestamp_field", "event_ts"),
            relation=f"{node['schema']}.{node['alias'] or node['name']}",
            online_model=online_model,
            online_relation=(
                f"{online_node['schema']}.{online_node['alias'] or online_node['name']}"
                if online_node
                else None
            ),
            features=features,
        )
    return FeatureRegistry(views=views, manifest_hash=manifest_hash)


def load_registry(path: Path | None = None) -> FeatureRegistry:
    """The registry from ``target/manifest.json`` (``dbt parse`` runs first when it is missing)."""
    path = path or ensure_manifest()
    manifest = json.loads(path.read_bytes())
    return registry_from_manifest(manifest, definitions_hash(manifest))


def definitions_hash(manifest: dict[str, Any]) -> str:
    """sha256 over every model's SQL checksum and documented columns. Unlike the bytes of
    manifest.json (which carry the invocation id, times and target schemas) it changes only when a
    model's definition does."""
    models = {
        unique_id: {
            "checksum": node.get("checksum", {}).get("checksum"),
            "columns": {
                name: [column.get("description"), _column_meta(column), column.get("data_type")]
                for name, column in sorted(node.get("columns", {}).items())
            },
            "meta": _model_meta(node),
        }
        for unique_id, node in manifest.get("nodes", {}).items()
        if node.get("resource_type") == "model"
    }
    return hashlib.sha256(json.dumps(models, sort_keys=True, default=str).encode()).hexdigest()


@lru_cache(maxsize=1)
def get_registry() -> FeatureRegistry:
    """Process-wide registry (the scorer and the online store read it once)."""
    return load_registry(manifest_path() if manifest_path().exists() else None)
