#!/usr/bin/env python3
"""Check that every role's defaults/main.yml and meta/argument_specs.yml agree.

The two files are the role's contract: every default is documented in the spec with the same
default, and every optional spec option has a default. Exits 1 with one line per disagreement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def check_role(role: Path) -> list[str]:
    problems: list[str] = []
    defaults_file = role / "defaults" / "main.yml"
    spec_file = role / "meta" / "argument_specs.yml"
    if not spec_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"]
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else {}
    spec = yaml.safe_load(spec_file.read_text()) or {}
    entry_points = spec.get("argument_specs") or {}
    if not entry_points:
        return [f"{role.name}: argument_specs.yml has no entry point"]
    # Every entry point's options together (the internal role common has one per task file).
    options: dict = {}
    for entry in entry_points.values():
        options.update((entry or {}).get("options") or {})
    for key, value in defaults.items():
        if key not in options:
            problems.append(f"{role.name}: default {key} is not in argument_specs.yml")
            continue
        opt = options[key] or {}
        if "default" not in opt and value is None:
            continue  # an optional variable that is unset by default (null in defaults/main.yml)
        if "default" not in opt:
            problems.append(f"{role.name}: {key} has a default ({value!r}) but argument_specs.yml gives none")
        elif opt["default"] != value:
            problems.append(
                f"{role.name}: {key} defaults to {value!r} but argument_specs.yml says {opt['default']!r}"
            )
    for key, opt in options.items():
        opt = opt or {}
        if key in defaults:
            continue
        if opt.get("required"):
            continue
        problems.append(f"{role.name}: option {key} is optional but has no value in defaults/main.yml")
    for key, opt in options.items():
        if not (opt or {}).get("description"):
            problems.append(f"{role.name}: option {key} has no description")
    return problems


def main() -> int:
    roles = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir()) if (ROOT / "roles").is_dir() else []
    problems = [line for role in roles for line in check_role(role)]
    for line in problems:
        print(f"argument_specs: {line}")
    if not problems:
        print(f"argument_specs: {len(roles)} roles, defaults and argument_specs agree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
