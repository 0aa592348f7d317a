"""Hardware profiles: one YAML file per device class, loaded into a validated ``HardwareProfile``.

    load_profile("raspberry-pi-4")      # a profile bundled with edgefleet, by name
    load_profile("boards/my-board.yaml")  # any file that follows the schema
    list_profiles()                     # every bundled profile, sorted by kind then name

Every failure is a ``ProfileError`` (a ``ValueError``) that says what is wrong, where (the file, the
field path such as ``memory.ram`` and, when known, the line) and what to do about it. The schema and
the meaning of each field are in ``schema.py`` and ``docs/profiles.md``.

This package needs only pydantic and PyYAML, so the device agent can import it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from edgefleet.hardware_profiles.schema import (
    Accelerator,
    Cpu,
    DeviceKind,
    HardwareProfile,
    Memory,
    NumberFormat,
    PowerModel,
    Runtime,
    Source,
    Speed,
    Throughput,
)

__all__ = [
    "Accelerator",
    "Cpu",
    "DeviceKind",
    "HardwareProfile",
    "Memory",
    "NumberFormat",
    "PowerModel",
    "ProfileError",
    "Runtime",
    "Source",
    "Speed",
    "Throughput",
    "list_profiles",
    "load_profile",
    "profile_names",
]

_SUFFIXES = (".yaml", ".yml")
_EXAMPLE = "see hardware_profiles/raspberry-pi-4.yaml for an example and docs/profiles.md for every field"
_LIST_HINT = "run `edgefleet profiles` to list known profiles, or pass the path of a YAML file"


class ProfileError(ValueError):
    """A hardware profile could not be found, parsed or validated.

    ``source`` is the file path (bundled files too) or the unknown name that was asked for;
    ``problems`` holds one line per thing wrong (field path first); ``hint`` says what to do.
    ``str(error)`` reads as one message.
    """

    def __init__(self, source: str, problems: Sequence[str], hint: str) -> None:
        self.source = source
        self.problems = tuple(problems)
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            body = f"hardware profile {self.source}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            body = f"hardware profile {self.source}: {len(self.problems)} problems\n{lines}"
        return f"{body}\n{self.hint}"


def _bundled() -> dict[str, Traversable]:
    """Bundled profile files by name (the file name without its suffix)."""
    package = resources.files(__name__)
    return {
        entry.name.rsplit(".", 1)[0]: entry
        for entry in package.iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIXES)
    }


def profile_names() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(_bundled())


def list_profiles() -> list[HardwareProfile]:
    """Every bundled profile, sorted by kind (in ``DeviceKind`` order: sbc, phone, mcu, host) then name."""
    kind_order = {kind: i for i, kind in enumerate(DeviceKind)}
    profiles = [load_profile(name) for name in profile_names()]
    return sorted(profiles, key=lambda p: (kind_order[p.kind], p.name))


def load_profile(name_or_path: str | os.PathLike[str]) -> HardwareProfile:
    """Load a bundled profile by name (``"raspberry-pi-4"``) or any profile file by path.

    A string is a bundled name unless it ends in .yaml/.yml or contains a path separator.
    Raises ``ProfileError`` for an unknown name, a missing file, bad YAML or an invalid profile.
    """
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        return _load_bundled(name_or_path)
    path = Path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "check the path, or give a bundled profile name (run `edgefleet profiles` to list them)"
        if path.stem in _bundled():
            hint = f"for the bundled profile, pass its name: '{path.stem}'"
        raise ProfileError(str(path), [f"no such file (looked in {path.resolve().parent})"], hint) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), [f"cannot read the file ({exc.__class__.__name__}: {exc})"], _EXAMPLE) from None
    return _parse(text, str(path))


def _looks_like_path(text: str) -> bool:
    return text.endswith(_SUFFIXES) or "/" in text or os.sep in text


def _load_bundled(name: str) -> HardwareProfile:
    files = _bundled()
    entry = files.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, files, n=1, cutoff=0.6)
        guess = f"did you mean '{close[0]}'? " if close else ""
        problem = f"unknown profile name; {guess}known profiles: {', '.join(sorted(files))}"
        raise ProfileError(name, [problem], _LIST_HINT)
    return _parse(entry.read_text(encoding="utf-8"), str(entry))


def _parse(text: str, source: str) -> HardwareProfile:
    """YAML text to a validated profile; every failure becomes a ProfileError naming ``source``."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise ProfileError(source, [_describe_yaml(exc)], _EXAMPLE) from None
    except yaml.YAMLError as exc:
        raise ProfileError(source, [f"YAML error: {exc}"], _EXAMPLE) from None
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ProfileError(source, [f"expected a mapping of fields (name:, kind:, cpu: ...), found {found}"], _EXAMPLE)
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        root = yaml.compose(text)  # parsed again only on failure, to point at line numbers
        problems = [_describe(error, root) for error in exc.errors()]
        raise ProfileError(source, problems, _EXAMPLE) from None


def _describe_yaml(exc: yaml.MarkedYAMLError) -> str:
    """'YAML syntax error at line 3, column 1: <problem> (while parsing <context> at line 2, column 7)'."""
    where = ""
    if exc.problem_mark is not None:
        where = f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    message = f"YAML syntax error{where}: {exc.problem or exc.context}"
    # The context mark is where the unclosed bracket or quote began: often the line to fix.
    if exc.context and exc.problem and exc.context_mark is not None:
        mark = exc.context_mark
        message += f" ({exc.context} at line {mark.line + 1}, column {mark.column + 1})"
    return message


def _describe(error: Any, root: yaml.Node | None) -> str:
    """One pydantic error as 'memory.ram (line 14): <message>'."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    path = _dotted(loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"{path} (line {line})" if line else path
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        fix = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
        message = f"unknown field; {fix}"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif "input" in error and not isinstance(error["input"], dict | list):
        message += f" (got {error['input']!r})"
    return f"{where}: {message}"


def _dotted(loc: tuple[int | str, ...]) -> str:
    """('accelerators', 0, 'kind') -> 'accelerators[0].kind'."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid dict key, e.g. formats: {fp8: fast}
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at ``loc``, or of the deepest ancestor that exists."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the schema model found at ``loc`` (used to suggest a fix for a typo)."""
    model: type[BaseModel] = HardwareProfile
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Cpu``, ``list[Accelerator]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
