"""Command-line conventions shared by every script.

Each script declares one `@dataclass class Config` and ends with `run(main, Config)`.
Any field can be overridden as `--key=value`; `--help` lists the keys, their defaults and
what they mean; an unknown key or a bad value is a one-line error, never a traceback.
"""

import dataclasses
import os
import sys
import types
import typing


class UserError(Exception):
    """A problem with the user's input (a file, a flag, a folder). Printed as one line, exit code 2."""


def _base_type(tp):
    """Optional[int] -> int, list[str] -> list; plain types pass through."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return typing.get_origin(tp) or tp


def _convert(key, text, tp):
    base = _base_type(tp)
    optional = type(None) in typing.get_args(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is list:
            return [t for t in text.split(",") if t]
        return base(text)
    except ValueError:
        raise UserError(f"--{key}: expected {getattr(base, '__name__', base)}, got {text!r}") from None


def parse_config(cls, argv=None):
    """Build a `cls` instance from `--key=value` arguments (also `--key value`, and `--flag` for booleans)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if "--help" in argv or "-h" in argv:
        print(help_text(cls))
        sys.exit(0)
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: options are written --key=value (see --help)")
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise UserError(f"unknown option --{key}; valid options: " + ", ".join("--" + k for k in fields))
        base = _base_type(hints[key])
        if not eq:
            if base is bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
                text = "true"
            elif base is list:  # --compare a b c
                items = []
                while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    items.append(argv[i + 1])
                    i += 1
                text = ",".join(items)
            elif i + 1 < len(argv):
                text = argv[i + 1]
                i += 1
            else:
                raise UserError(f"--{key} needs a value")
        values[key] = _convert(key, text, hints[key])
        i += 1
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def help_text(cls):
    lines = ["options (defaults in brackets):"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = getattr(_base_type(hints[f.name]), "__name__", "")
        lines.append(f"  --{f.name}={name} [{default}]  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def named_folders(items):
    """--models items "NAME:FOLDER" (or a bare folder, named by its basename) -> [(name, folder)], each name
    once (evaluate.py and serve.py)."""
    out = []
    for item in items:
        name, sep, folder = item.partition(":")
        if not sep:
            name, folder = os.path.basename(os.path.normpath(item)), item
        check(name and folder, f"--models: expected NAME:FOLDER, got {item!r}")
        check(name not in dict(out), f"--models: the name {name!r} is given twice")
        out.append((name, folder))
    return out


def check(condition, message):
    """Config validation in one line: check(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")."""
    if not condition:
        raise UserError(message)


def run(main, cls, argv=None):
    """Parse the config and call main(cfg); a UserError becomes one line on stderr and exit code 2.
    With --check_config the config is only parsed and validated (exit 0 if good): how sweep.py asks
    train_ppo.py about the options it will pass, without importing another script."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if "--check_config" in argv:
            parse_config(cls, [a for a in argv if a != "--check_config"])
            sys.exit(0)
        cfg = parse_config(cls, argv)
        return main(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as e:
        print(f"error: {e.filename or e}: no such file or folder", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `python chat.py ... | head`
        os._exit(0)
