"""Command-line options generated from an options dataclass, so that flags, help, choices and defaults cannot drift.

Each init field becomes `--field-name`; its `metadata` may hold `help`, `choices`, `nargs`, `group`
(an argument-group title), `exclusive` (the name of a mutually exclusive group) and `cli: False`
(not an option). A field without a default is a required option. `bool` fields are switches:
`store_true` when the default is False, `--x/--no-x` otherwise. `int`, `float` and `str` fields
(also inside `| None`) parse as that type; `tuple[str, ...]` fields take one string (the dataclass
splits it) unless `nargs` is set.
"""

import argparse
import dataclasses
import types
import typing


def add_dataclass_options(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = ()) -> dict:
    """Add one option per init field of the dataclass `cls` to `parser` (see the module docstring).

    Returns:
        `dict`: the mutually exclusive groups by name, for options that are not fields.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for option in dataclasses.fields(cls):
        meta = option.metadata
        if not option.init or option.name in skip or meta.get("cli", True) is False:
            continue
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        if "exclusive" in meta:
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = target.add_mutually_exclusive_group()
            target = exclusive[meta["exclusive"]]
        target.add_argument("--" + option.name.replace("_", "-"), **_argument(option, hints[option.name]))
    return exclusive


def dataclass_values(cls, args: argparse.Namespace) -> dict:
    """The parsed values of `cls`'s options, as keyword arguments of `cls`."""
    return {
        option.name: getattr(args, option.name) for option in dataclasses.fields(cls) if hasattr(args, option.name)
    }


def _argument(option: dataclasses.Field, hint) -> dict:
    meta = option.metadata
    required = option.default is dataclasses.MISSING and option.default_factory is dataclasses.MISSING
    default = (
        None if required else option.default if option.default is not dataclasses.MISSING else option.default_factory()
    )
    kind = _base_type(hint)
    help_text = meta.get("help", "")
    kwargs = {"dest": option.name, "help": help_text}
    if kind is bool:
        # BooleanOptionalAction writes the default into the help itself
        kwargs.update(default=default, action="store_true" if default is False else argparse.BooleanOptionalAction)
        return kwargs
    kwargs.update(type=kind if kind in (int, float) else str, default=default)
    if required:
        kwargs["required"] = True
    for key in ("choices", "nargs"):
        if key in meta:
            kwargs[key] = meta[key]
    if default is not None and "default:" not in help_text:
        shown = ",".join(default) if isinstance(default, tuple) else default
        kwargs["help"] = f"{help_text} (default: {shown})".strip()
    return kwargs


def _base_type(hint):
    """`int`, `float`, `str` or `bool` from a field's type hint (`X | None` and `tuple[X, ...]` give X)."""
    arguments = [arg for arg in typing.get_args(hint) if arg is not type(None) and arg is not Ellipsis]
    if typing.get_origin(hint) in (typing.Union, types.UnionType, tuple):
        return _base_type(arguments[0]) if arguments else str
    return hint if hint in (int, float, str, bool) else str
