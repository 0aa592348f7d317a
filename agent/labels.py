"""Device labels: free-form ``key=value`` pairs a device reports in its state, to select it by.

Labels say where a device is or what it does (``site=greenhouse``, ``floor=2``, ``camera=ov5647``)
where groups only say which deploy topics it listens to. The agent sets them from ``--label`` or
the config file's ``labels:`` mapping; the fleet selects on them (``edgefleet devices --label``,
``edgefleet rollout start --label``). The rules are strict so a label survives a shell, a URL and
a YAML file unquoted:

* a key is 1-63 letters, digits, ``.``, ``_``, ``-`` or ``/``, starting with a letter or digit;
* a value is 0-63 of the same characters (an empty value is allowed: ``--label canary=``);
* a device has at most ``MAX_LABELS`` of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MAX_LABELS = 32
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
_VALUE = re.compile(r"^[A-Za-z0-9_./-]{0,63}$")


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Return ``labels`` as a plain dict if every key and value is valid, else raise ValueError naming the bad one."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels: a device can have at most {MAX_LABELS}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"invalid label key {key!r}: use 1-63 letters, digits, '.', '_', '-' or '/', "
                             "starting with a letter or digit")
        if not isinstance(value, str) or not _VALUE.match(value):
            raise ValueError(f"invalid value {value!r} for label {key!r}: use up to 63 letters, digits, "
                             "'.', '_', '-' or '/' (quote nothing, no spaces)")
    return dict(labels)


def parse_label(text: str) -> tuple[str, str]:
    """``"site=greenhouse"`` -> ``("site", "greenhouse")``; ValueError says what a label looks like."""
    key, eq, value = text.partition("=")
    if not eq:
        raise ValueError(f"{text!r} is not a label: write KEY=VALUE, e.g. site=greenhouse")
    check_labels({key: value})
    return key, value


def parse_labels(texts: Iterable[str]) -> dict[str, str]:
    """Several ``KEY=VALUE`` strings as one mapping; a key given twice is an error, not a silent override."""
    labels: dict[str, str] = {}
    for text in texts:
        key, value = parse_label(text)
        if key in labels and labels[key] != value:
            raise ValueError(f"label {key!r} given twice ({labels[key]!r} and {value!r})")
        labels[key] = value
    return check_labels(labels)


def format_labels(labels: Mapping[str, str]) -> str:
    """``{"site": "a", "floor": "2"}`` -> ``"floor=2,site=a"``: sorted, for tables."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Whether ``labels`` has every key of ``wanted`` with the same value (an AND of all of them)."""
    return all(labels.get(k) == v for k, v in wanted.items())
