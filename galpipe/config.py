"""One validated configuration object for a survey and its analyses.

A config is YAML: the survey (where its tables come from, which columns play which role), the
mass bins, the feature sets, the contrastive models to interpret ("imodels"), the information
tuples, and the settings of each stage. The models to train are derived from the analyses: one
SCL model per imodel, one MI model per feature set used in a tuple. Defaults for the bundled
sample and the paper's profile are config files in ``configs/``, not code branches.

Every section is hashed (:func:`stable_hash`) so stage outputs can be keyed by the config that
produced them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from galpipe.bins import MassBins
from galpipe.features import FeatureSet, parse_feature_sets

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "ngc_ic.yaml"


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short, order-independent SHA-256 hash of a JSON-serialisable object."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the type annotation ``hint`` (None when it does)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if all(_type_problem(value, option) for option in options):
            return f"expected {' or '.join(_type_name(o) for o in options)}, got {value!r}"
        return None
    if hint is type(None):
        return None if value is None else f"expected null, got {value!r}"
    if hint is Any:
        return None
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {value!r}"
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(item_hints) != len(value):
            return f"expected a list of {len(item_hints)} values, got {value!r}"
        for item, item_hint in zip(value, item_hints):
            problem = _type_problem(item, item_hint)
            if problem:
                return f"in {list(value)!r}: {problem}"
        return None
    if origin is dict:
        return None if isinstance(value, Mapping) else f"expected a mapping, got {value!r}"
    return None


def _type_name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _build(cls, raw: Mapping[str, Any] | None, where: str):
    """A dataclass from a mapping, rejecting unknown keys and wrongly typed values with the
    config path named."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ValueError(f"config section '{where}' must be a mapping of key: value, "
                         f"got {raw!r}")
    raw = dict(raw or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"config section '{where}': unknown keys {unknown} "
                         f"(allowed: {sorted(names)})")
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        problem = _type_problem(value, hints.get(key, Any))
        if problem:
            raise ValueError(f"config value {where}.{key}: {problem}")
    return cls(**raw)


_AT_LEAST_ONE = {
    "training": ("steps", "batch_size", "checkpoint_every", "validate_every", "log_every",
                 "num_workers"),
    "inference": ("batch_size", "num_actors"),
    "neighbours": ("k", "num_actors", "block_size"),
    "local_tests": ("n_permutations", "min_valid", "num_actors", "block_size"),
    "discovery": ("n_bootstrap", "num_actors"),
    "information": ("n_bootstrap", "min_count"),
    "survey": ("image_size",),
}
_CHOICES = {
    ("discovery", "methods"): ("pc", "fci"),
    ("discovery", "indep_test"): ("fisherz", "kci"),
    ("neighbours", "knn_weighting"): ("inverse_distance", "gaussian", "uniform"),
    ("information", "split"): ("train", "validation", "test", "inference"),
    ("training", "architecture"): ("small", "paper"),
}


def _check_values(config: "Config") -> None:
    """Range and choice checks that the types alone cannot express (names the config path)."""
    for section, keys in _AT_LEAST_ONE.items():
        for key in keys:
            value = getattr(getattr(config, section), key)
            if value < 1:
                raise ValueError(f"config value {section}.{key} must be >= 1, got {value}")
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        for item in (value if isinstance(value, tuple) else (value,)):
            if item not in allowed:
                raise ValueError(f"config value {section}.{key}: '{item}' is not one of "
                                 f"{list(allowed)}")
    for where, value in (("training.learning_rate", config.training.learning_rate),
                         ("local_tests.alpha", config.local_tests.alpha),
                         ("discovery.alpha", config.discovery.alpha)):
        if not value > 0:
            raise ValueError(f"config value {where} must be > 0, got {value}")
    for where, edges in (("local_tests.mass_edges", config.local_tests.mass_edges),
                         ("information.mass_edges", config.information.mass_edges),
                         ("information.magnitude_edges", config.information.magnitude_edges)):
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"config value {where} must increase strictly, got {list(edges)}")
    quantiles = config.inference.pdf_quantiles
    if any(not 0 < q < 1 for q in quantiles) or list(quantiles) != sorted(set(quantiles)):
        raise ValueError(f"config value inference.pdf_quantiles must be increasing values in "
                         f"(0, 1), got {list(quantiles)}")
    if not 0 < config.information.level < 1:
        raise ValueError(f"config value information.level must be in (0, 1), "
                         f"got {config.information.level}")
    _check_source(config.survey.source)


def _check_source(source: Mapping[str, Any]) -> None:
    """survey.source: a known kind with what that kind needs."""
    kind = source.get("kind")
    if kind not in ("sample", "mock", "tables"):
        raise ValueError(f"config value survey.source.kind must be sample, mock or tables, "
                         f"got {kind!r}")
    if kind == "mock":
        for key in ("n", "seed"):
            value = source.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    (key == "n" and value < 1):
                raise ValueError(f"config value survey.source.{key} must be an integer"
                                 f"{' >= 1' if key == 'n' else ''}, got {value!r}")
    if kind == "tables" and not isinstance(source.get("galaxies"), str):
        raise ValueError("config value survey.source.galaxies must be the URI of a galaxies "
                         f"Parquet dataset for kind 'tables', got {source.get('galaxies')!r}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key repeated in one mapping (a silent typo otherwise)."""


def _mapping_without_repeats(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _mapping_without_repeats)


def _read_yaml(path: Path) -> dict[str, Any]:
    """A config file's top-level mapping, every failure named with the file."""
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"config file {path} is not a file")
    try:
        with path.open() as handle:
            raw = yaml.load(handle, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections (survey:, "
                         f"feature_sets:, ...), got {type(raw).__name__}")
    return raw


@dataclass(frozen=True)
class SurveyConfig:
    """Where the survey comes from and which columns play which role.

    ``source`` is one of ``{kind: sample}`` (the bundled NGC/IC sample),
    ``{kind: mock, n: 10000, seed: 0}``, or ``{kind: tables, galaxies: URI, cutouts: URI}``
    (Parquet datasets already in the contracts, e.g. from ``galpipe ingest``).
    """

    name: str = "ngc_ic"
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "sample"})
    class_column: str = "class"
    magnitude_column: str | None = None
    image_size: int = 64


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation schedule and resources of every model (per-kind overrides allowed).

    The paper trains 180k steps with Adam at 1e-4, dividing the rate by 5 after a third of
    the run; the bundled default is far shorter so the whole pipeline runs on 2 CPU cores.
    """

    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_drop_at: float = 1 / 3
    lr_drop_factor: float = 5.0
    weight_decay: float = 0.0
    checkpoint_every: int = 200
    validate_every: int = 200
    log_every: int = 20
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    mixed_precision: bool = True
    architecture: str = "small"
    seed: int = 0
    reconstruction_weight_image: float = 100.0
    reconstruction_weight_catalogue: float = 1.0
    # Gaussian soft labels of this width (dex) around the true bin; 0 = hard one-hot targets
    # as in the paper. Small samples over 0.0125-dex bins need it to avoid memorising the
    # training histogram.
    label_smoothing_dex: float = 0.0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_model(self, input_kind: str, training_kind: str, name: str) -> "TrainingConfig":
        """This config with the overrides for ``image``/``catalogue``, ``scl``/``mi`` and the
        model's own name applied, in that order."""
        merged = self
        for key in (input_kind, training_kind, f"{input_kind}:{training_kind}", name):
            if key in self.overrides:
                try:
                    merged = replace(merged, **self.overrides[key])
                except TypeError as exc:
                    raise ValueError(f"training.overrides.{key}: {exc}") from exc
        return replace(merged, overrides={})


@dataclass(frozen=True)
class InferenceConfig:
    batch_size: int = 256
    num_actors: int = 1
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0
    pdf_quantiles: tuple[float, ...] = (0.05, 0.16, 0.5, 0.84, 0.95)


@dataclass(frozen=True)
class NeighboursConfig:
    """Exact KNN of every galaxy among the training galaxies, in each imodel's S."""

    k: int = 100
    exclude_self: bool = True
    num_actors: int = 2
    block_size: int = 4096
    knn_weighting: str = "inverse_distance"
    knn_smoothing_dex: float = 0.05


@dataclass(frozen=True)
class LocalTestsConfig:
    """Local causal tests of mass against ``query`` given ``condition`` over neighbours."""

    query: str = "axis_ratio"
    condition: str | None = "redshift"
    n_permutations: int = 100
    min_valid: int = 10
    alpha: float = 0.05
    seed: int = 0
    num_actors: int = 2
    block_size: int = 2048
    mass_edges: tuple[float, ...] = (6.0, 9.0, 10.0, 10.5, 11.0, 12.5)


@dataclass(frozen=True)
class DiscoveryConfig:
    """Global causal discovery with causal-learn over galaxy variables and model estimates.

    ``variables`` are galaxies columns, or ``estimate:<feature set>`` for an MI model's mean
    mass estimate, or ``colour:<a>-<b>`` for a colour from two magnitude columns.
    """

    variables: tuple[str, ...] = ("stellar_mass", "redshift")
    methods: tuple[str, ...] = ("pc", "fci")
    indep_test: str = "fisherz"
    alpha: float = 0.01
    n_bootstrap: int = 50
    sample_size: int | None = None
    num_actors: int = 2
    seed: int = 0


@dataclass(frozen=True)
class InformationTuple:
    """A tuple <X1, X2> of feature sets with the union model; optional gap reference."""

    name: str
    sources: tuple[str, str]
    union: str
    reference: str | None = None


@dataclass(frozen=True)
class InformationConfig:
    tuples: tuple[InformationTuple, ...] = ()
    redundancy: str = "mmi"
    n_bootstrap: int = 200
    level: float = 0.95
    min_count: int = 20
    seed: int = 0
    split: str = "test"
    mass_edges: tuple[float, ...] = ()
    magnitude_edges: tuple[float, ...] = ()


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: ``tracking_uri`` None means a local SQLite store under the storage root's
    parent directory (or $MLFLOW_TRACKING_URI when set)."""

    experiment: str = "galpipe"
    tracking_uri: str | None = None


@dataclass(frozen=True)
class ResourcesConfig:
    num_cpus: int | None = None
    object_store_mb: int = 512


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    survey: SurveyConfig
    bins: MassBins
    feature_sets: dict[str, FeatureSet]
    imodels: tuple[str, ...]
    training: TrainingConfig
    inference: InferenceConfig
    neighbours: NeighboursConfig
    local_tests: LocalTestsConfig
    discovery: DiscoveryConfig
    information: InformationConfig
    tracking: TrackingConfig
    resources: ResourcesConfig
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    source_path: str | None = None

    # Derived ------------------------------------------------------------------------------

    def feature_set(self, name: str) -> FeatureSet:
        try:
            return self.feature_sets[name]
        except KeyError:
            raise ValueError(f"unknown feature set '{name}' "
                             f"(declared: {sorted(self.feature_sets)})") from None

    def models(self) -> list["ModelSpec"]:
        """Every model the analyses need: SCL per imodel, MI per feature set in a tuple."""
        specs = [ModelSpec(f"scl:{fs}", fs, "scl") for fs in self.imodels]
        mi_sets: list[str] = []
        for tup in self.information.tuples:
            for fs in (*tup.sources, tup.union, tup.reference):
                if fs and fs not in mi_sets:
                    mi_sets.append(fs)
        specs += [ModelSpec(f"mi:{fs}", fs, "mi") for fs in mi_sets]
        for spec in specs:
            self.feature_set(spec.feature_set)
        return specs

    def section_hash(self, section: str) -> str:
        """Hash of one raw config section (what a stage's cache key depends on)."""
        return stable_hash(self.raw.get(section))

    @property
    def config_hash(self) -> str:
        return stable_hash(self.raw)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


@dataclass(frozen=True)
class ModelSpec:
    """One model to train: its name (``scl:<feature set>`` / ``mi:<feature set>``)."""

    name: str
    feature_set: str
    kind: str

    @property
    def slug(self) -> str:
        """A filesystem-safe version of the name."""
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.name)


def _tuples(raw: list[Mapping[str, Any]] | None) -> tuple[InformationTuple, ...]:
    if raw is not None and not isinstance(raw, (list, tuple)):
        raise ValueError(f"information.tuples must be a list, got {raw!r}")
    out = []
    for i, entry in enumerate(raw or []):
        if not isinstance(entry, Mapping):
            raise ValueError(f"information.tuples[{i}] must be a mapping with 'sources' and "
                             f"'union', got {entry!r}")
        entry = dict(entry)
        if not isinstance(entry.get("sources"), (list, tuple)):
            raise ValueError(f"information.tuples[{i}]: 'sources' must be a list of two feature "
                             f"sets, got {entry.get('sources')!r}")
        try:
            sources = tuple(entry.pop("sources"))
            union = entry.pop("union")
        except KeyError as exc:
            raise ValueError(f"information.tuples[{i}] needs 'sources' and 'union'") from exc
        if len(sources) != 2:
            raise ValueError(f"information.tuples[{i}]: 'sources' must name two feature sets")
        name = entry.pop("name", f"<{sources[0]}, {sources[1]}>")
        reference = entry.pop("reference", None)
        if entry:
            raise ValueError(f"information.tuples[{i}]: unknown keys {sorted(entry)}")
        out.append(InformationTuple(name, sources, union, reference))
    return tuple(out)


def _tupled(section: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    if section is not None and not isinstance(section, Mapping):
        return section  # _build reports the section's type
    section = dict(section or {})
    for key in keys:
        if isinstance(section.get(key), (list, tuple)):
            section[key] = tuple(section[key])
    return section


def from_dict(raw: Mapping[str, Any], source_path: str | None = None) -> Config:
    """Validate a raw config mapping into a :class:`Config`."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"config must be a mapping of sections, got {type(raw).__name__}")
    raw = copy.deepcopy(dict(raw))
    allowed = {"survey", "bins", "feature_sets", "imodels", "training", "inference",
               "neighbours", "local_tests", "discovery", "information", "tracking", "resources"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"config: unknown sections {unknown} (allowed: {sorted(allowed)})")
    if not raw.get("feature_sets"):
        raise ValueError("config: 'feature_sets' is empty; declare at least one feature set")

    imodels = raw.get("imodels", ())
    if not isinstance(imodels, (list, tuple)) or not all(isinstance(m, str) for m in imodels):
        raise ValueError(f"config value imodels must be a list of feature set names, "
                         f"got {imodels!r}")
    if raw.get("information") is not None and not isinstance(raw["information"], Mapping):
        raise ValueError(f"config section 'information' must be a mapping, "
                         f"got {raw['information']!r}")
    information = _tupled(raw.get("information"), ("mass_edges", "magnitude_edges"))
    information["tuples"] = _tuples(information.get("tuples"))
    config = Config(
        survey=_build(SurveyConfig, raw.get("survey"), "survey"),
        bins=_build(MassBins, raw.get("bins"), "bins"),
        feature_sets=parse_feature_sets(raw["feature_sets"]),
        imodels=tuple(raw.get("imodels", ())),
        training=_build(TrainingConfig, raw.get("training"), "training"),
        inference=_build(InferenceConfig, _tupled(raw.get("inference"), ("pdf_quantiles",)),
                         "inference"),
        neighbours=_build(NeighboursConfig, raw.get("neighbours"), "neighbours"),
        local_tests=_build(LocalTestsConfig, _tupled(raw.get("local_tests"), ("mass_edges",)),
                           "local_tests"),
        discovery=_build(DiscoveryConfig,
                         _tupled(raw.get("discovery"), ("variables", "methods")), "discovery"),
        information=_build(InformationConfig, information, "information"),
        tracking=_build(TrackingConfig, raw.get("tracking"), "tracking"),
        resources=_build(ResourcesConfig, raw.get("resources"), "resources"),
        raw=raw,
        source_path=source_path,
    )
    _check_values(config)
    for tup in config.information.tuples:
        for fs in (*tup.sources, tup.union, tup.reference):
            if fs:
                config.feature_set(fs)
    config.models()
    return config


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML config (the bundled sample's default when ``path`` is None).

    ``overrides`` is a nested mapping merged on top (used by the CLI and tests).
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = _read_yaml(path)
    if "include" in raw:
        include = raw.pop("include")
        if not isinstance(include, str):
            raise ValueError(f"config file {path}: 'include' must be a file name, "
                             f"got {include!r}")
        base_path = (path.parent / include).resolve()
        if not base_path.exists():
            raise FileNotFoundError(f"config file {path} includes {base_path}, which does "
                                    f"not exist")
        raw = deep_merge(_read_yaml(base_path), raw)
    if overrides:
        raw = deep_merge(raw, overrides)
    return from_dict(raw, source_path=str(path))


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in recursively (mappings merge, other values replace)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def training_dict(training: TrainingConfig) -> dict[str, Any]:
    return asdict(training)
