"""Which label value an ROI of a structure set (or a segment of a SEG) becomes, by its name.

Clinical ROI names are inconsistent ("Liver", "LIVER", "liver_1", "Lt Kidney"), so a
manifest maps names to label values with rules (see ``RoiMapping.from_config``):

* ``"Liver"``: the name, compared case-insensitively with spaces, ``-`` and ``_`` taken as equal;
* ``"exact:Liver"``: exactly this name (case and spacing matter);
* ``"glob:*kidney*l*"``: a shell pattern, case-insensitive;
* ``"re:liver(_\\d+)?"``: a Python regular expression matching the whole name, case-insensitive.

Without rules, each label name of the manifest matches ROIs by the first rule, under its
own name and under its AAPM TG-263 standard name (``TG263``): label ``kidney_left`` finds
ROI ``Kidney_L``. The same table names the ROIs medseg writes (``standard_name``).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from medseg.errors import ConfigError

# AAPM TG-263 (2018) standard names of common structures, keyed by the simplified names medseg
# and its phantoms use. Only what a default needs; a manifest names anything else itself.
TG263 = {
    "liver": "Liver",
    "spleen": "Spleen",
    "kidney": "Kidneys",
    "kidneys": "Kidneys",
    "kidney_left": "Kidney_L",
    "kidney_right": "Kidney_R",
    "pancreas": "Pancreas",
    "stomach": "Stomach",
    "gallbladder": "Gallbladder",
    "duodenum": "Duodenum",
    "esophagus": "Esophagus",
    "heart": "Heart",
    "lung_left": "Lung_L",
    "lung_right": "Lung_R",
    "lungs": "Lungs",
    "bladder": "Bladder",
    "prostate": "Prostate",
    "rectum": "Rectum",
    "spinal_cord": "SpinalCord",
    "brainstem": "Brainstem",
    "brain": "Brain",
    "parotid_left": "Parotid_L",
    "parotid_right": "Parotid_R",
    "mandible": "Bone_Mandible",
    "body": "External",
    "external": "External",
}


def standard_name(name: str) -> str:
    """The TG-263 name of a label name medseg knows (``liver`` -> ``Liver``), else the name itself."""
    return TG263.get(_simplify(name).replace(" ", "_"), name)


@dataclass(frozen=True)
class RoiMatch:
    """The outcome of mapping one case's ROI names: what is used, and what to report."""

    values: dict[str, int]  # ROI name -> label value
    unmatched: list[str]  # ROI names no rule matched (left out)
    missing: list[int]  # label values no ROI matched


@dataclass(frozen=True)
class RoiMapping:
    """Rules mapping ROI names to label values (``rules``: label value -> patterns)."""

    rules: dict[int, tuple[str, ...]]

    @classmethod
    def from_config(cls, raw: object, where: str) -> "RoiMapping":
        """Rules from a manifest's ``"roi_names"``: ``{"1": ["Liver", "re:liver_\\d+"], ...}``."""
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{where}: \"roi_names\" must map label values to lists of ROI names or patterns, e.g. "
                              "{\"1\": [\"Liver\"]}")
        rules: dict[int, tuple[str, ...]] = {}
        for key, patterns in raw.items():
            patterns = [patterns] if isinstance(patterns, str) else patterns
            if not str(key).isdigit() or int(key) == 0:
                raise ConfigError(f"{where}: roi_names: key {key!r} must be a label value >= 1")
            if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
                raise ConfigError(f"{where}: roi_names[{key!r}] must be a non-empty list of ROI names or patterns")
            for pattern in patterns:
                if pattern.startswith("re:"):
                    try:
                        re.compile(pattern[3:])
                    except re.error as error:
                        raise ConfigError(f"{where}: roi_names[{key!r}]: bad regular expression {pattern[3:]!r} "
                                          f"({error})") from None
            rules[int(key)] = tuple(patterns)
        return cls(rules)

    @classmethod
    def from_label_names(cls, names: dict[int, str]) -> "RoiMapping":
        """The default: each label's own name and its TG-263 name, matched loosely."""
        return cls({value: tuple(dict.fromkeys((name, standard_name(name)))) for value, name in names.items()})

    def match(self, roi_names: list[str], *, source: object) -> RoiMatch:
        """Map every ROI name of the file ``source`` (named in errors).

        Raises ``ConfigError`` listing the ROIs that match several label values: medseg does
        not guess which one is meant.
        """
        values: dict[str, int] = {}
        unmatched: list[str] = []
        ambiguous: dict[str, list[int]] = {}
        for name in roi_names:
            hits = [value for value, patterns in self.rules.items() if any(_matches(p, name) for p in patterns)]
            if not hits:
                unmatched.append(name)
            elif len(hits) > 1:
                ambiguous[name] = hits
            else:
                values[name] = hits[0]
        if ambiguous:
            listing = ", ".join(f"{name!r} -> labels {hits}" for name, hits in ambiguous.items())
            raise ConfigError(f"{source}: ROI(s) matched by several labels: {listing}; make \"roi_names\" exclusive")
        return RoiMatch(values, unmatched, sorted(set(self.rules) - set(values.values())))


def _simplify(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("exact:"):
        return name == pattern[6:]
    if pattern.startswith("glob:"):
        return fnmatch.fnmatchcase(name.casefold(), pattern[5:].casefold())
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name, flags=re.IGNORECASE) is not None
    return _simplify(name) == _simplify(pattern)
