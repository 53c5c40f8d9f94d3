"""Feature sets: named, declared inputs of a model, defined as data rather than code.

A feature set declares its *main input* (image bands, or catalogue columns with their error
columns) and its *additional inputs* (catalogue values that enter an image encoder as a
per-channel bias, or are appended to a catalogue model's input vector). The paper's sets and the
bundled sample's analogues ship in ``configs/``; a survey adds its own in its config file.

Example (YAML)::

    feature_sets:
      Mugriz: {columns: [mag_u, mag_g, mag_r, mag_i, mag_z],
               errors: [mag_err_u, mag_err_g, mag_err_r, mag_err_i, mag_err_z], extra: [ebv]}
      Iugriz: {bands: [u, g, r, i, z], extra: [ebv]}
      Iugriz+MW123: {union: [Iugriz, MW123]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeatureSet:
    """A named model input.

    Parameters
    ----------
    name:
        Name used in configs, tables and figures (e.g. ``Mugriz``, ``Iugriz+MW123``).
    bands:
        Image bands forming the main input (C x H x W); empty for catalogue models.
    columns:
        Catalogue columns: the main input of a catalogue model, or additional inputs of an
        image model.
    errors:
        Error columns that accompany ``columns`` (appended after them).
    extra:
        Further additional inputs that every model of this set receives (e.g. E(B-V)).
    flux_normalise:
        Divide each image band by the galaxy's flux in that band before the stretch (the
        paper's flux-normalised images); needs ``flux_columns``.
    flux_columns:
        One catalogue flux column per band (e.g. ``petro_flux_u``), used by ``flux_normalise``.
    """

    name: str
    bands: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    flux_normalise: bool = False
    flux_columns: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.bands and not self.columns and not self.extra:
            raise ValueError(f"feature set '{self.name}' declares no bands and no columns")
        if self.flux_normalise and len(self.flux_columns) != len(self.bands):
            raise ValueError(
                f"feature set '{self.name}': flux_normalise needs one flux column per band "
                f"({len(self.bands)} bands, {len(self.flux_columns)} flux columns)"
            )
        for group in (self.bands, self.catalogue_inputs):
            duplicates = sorted({x for x in group if group.count(x) > 1})
            if duplicates:
                raise ValueError(f"feature set '{self.name}' repeats {duplicates}")

    @property
    def input_kind(self) -> str:
        """``image`` when the main input is a cutout, else ``catalogue``."""
        return "image" if self.bands else "catalogue"

    @property
    def catalogue_inputs(self) -> tuple[str, ...]:
        """Catalogue values fed to the network, in order: columns, errors, extra."""
        return self.columns + self.errors + self.extra

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Every galaxies column the set reads (inputs and fluxes)."""
        return self.catalogue_inputs + (self.flux_columns if self.flux_normalise else ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "bands": list(self.bands), "columns": list(self.columns),
            "errors": list(self.errors), "extra": list(self.extra),
            "flux_normalise": self.flux_normalise, "flux_columns": list(self.flux_columns),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSet":
        return cls(
            name=data["name"], bands=tuple(data.get("bands", ())),
            columns=tuple(data.get("columns", ())), errors=tuple(data.get("errors", ())),
            extra=tuple(data.get("extra", ())),
            flux_normalise=bool(data.get("flux_normalise", False)),
            flux_columns=tuple(data.get("flux_columns", ())),
            description=str(data.get("description", "")),
        )

    def check_available(self, columns: Iterable[str], bands: Iterable[str] | None) -> None:
        """Raise ValueError naming what this set needs but the survey does not have."""
        columns = set(columns)
        missing_columns = [c for c in self.required_columns if c not in columns]
        problems = []
        if missing_columns:
            problems.append(f"columns {missing_columns} are not in the galaxies table "
                            f"(available: {sorted(columns)})")
        if self.bands:
            have = list(bands or [])
            missing_bands = [b for b in self.bands if b not in have]
            if missing_bands:
                problems.append(f"bands {missing_bands} are not in the cutouts (have {have})")
        if problems:
            raise ValueError(f"feature set '{self.name}': " + "; ".join(problems))


def _merge(name: str, parts: list[FeatureSet], description: str) -> FeatureSet:
    """The union of several feature sets, keeping first-seen order and dropping repeats."""
    def ordered(values: Iterable[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(values))

    image_parts = [p for p in parts if p.bands]
    normalised = {p.flux_normalise for p in image_parts}
    if len(normalised) > 1:
        raise ValueError(f"feature set '{name}' mixes flux-normalised and plain images")
    bands = ordered(b for p in parts for b in p.bands)
    columns = ordered(c for p in parts for c in p.columns)
    errors = ordered(c for p in parts for c in p.errors)
    extra = ordered(c for p in parts for c in p.extra if c not in columns and c not in errors)
    flux_columns = ordered(c for p in image_parts for c in p.flux_columns)
    return FeatureSet(
        name=name, bands=bands, columns=columns, errors=errors, extra=extra,
        flux_normalise=bool(normalised and normalised.pop()), flux_columns=flux_columns,
        description=description or " + ".join(p.name for p in parts),
    )


def parse_feature_sets(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, FeatureSet]:
    """Build feature sets from a config mapping ``name -> declaration`` (unions resolved)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"'feature_sets' must be a mapping of name -> declaration, got "
                         f"{type(raw).__name__}")
    resolved: dict[str, FeatureSet] = {}

    def build(name: str, stack: tuple[str, ...]) -> FeatureSet:
        if name in resolved:
            return resolved[name]
        if name not in raw:
            raise ValueError(f"unknown feature set '{name}' (declared: {sorted(raw)})")
        if name in stack:
            raise ValueError(f"feature set union cycle: {' -> '.join(stack + (name,))}")
        if not isinstance(raw[name], Mapping) and raw[name] is not None:
            raise ValueError(f"feature set '{name}' must be a mapping like "
                             f"{{columns: [...]}} or {{bands: [...]}}, got {raw[name]!r}")
        spec = dict(raw[name] or {})
        for key in ("bands", "columns", "errors", "extra", "flux_columns", "union"):
            value = spec.get(key, [])
            # A bare string would be split into characters by tuple(): refuse it.
            if not isinstance(value, (list, tuple)) or \
                    not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"feature set '{name}': '{key}' must be a list of names, "
                                 f"got {value!r}")
        if not isinstance(spec.get("flux_normalise", False), bool):
            raise ValueError(f"feature set '{name}': 'flux_normalise' must be true or false, "
                             f"got {spec['flux_normalise']!r}")
        unknown = set(spec) - {"bands", "columns", "errors", "extra", "flux_normalise",
                               "flux_columns", "description", "union"}
        if unknown:
            raise ValueError(f"feature set '{name}': unknown keys {sorted(unknown)}")
        if "union" in spec:
            parts = [build(part, stack + (name,)) for part in spec["union"]]
            feature_set = _merge(name, parts, spec.get("description", ""))
        else:
            feature_set = FeatureSet.from_dict({"name": name, **spec})
        resolved[name] = feature_set
        return feature_set

    for name in raw:
        build(name, ())
    return resolved
