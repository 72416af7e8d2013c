"""The paradigm registry: ``config.family`` names one object of this table (``families/<name>.py``).

    family = get_family("flexvar")
    schedule = family.schedule(config, patch_nums=(1, 2, 3, 5, 7))

A new paradigm is a new module here whose ``FAMILY`` fills the slots of :class:`~arvision.families.base.Family`,
plus one line in ``FAMILIES``.  Modules are imported on first use (they import the config and the models, which
look families up in turn).
"""

from __future__ import annotations

import importlib

from arvision.errors import ArvisionError

FAMILIES = {
    "var": "arvision.families.var",
    "llamagen": "arvision.families.llamagen",
    "flexvar": "arvision.families.flexvar",
    "nar": "arvision.families.nar",
    "hmar": "arvision.families.hmar",
    "maskgit": "arvision.families.maskgit",
    "flowar": "arvision.families.flowar",
    "infinity": "arvision.families.infinity",
}


def family_names() -> list[str]:
    return list(FAMILIES)


def get_family(name: str):
    """The family object registered as ``name``."""
    if name not in FAMILIES:
        raise ArvisionError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def all_families() -> list:
    return [get_family(name) for name in FAMILIES]


def family_for_tokenizer(kind: str):
    """The first registered family whose models use a tokenizer of ``kind`` (``arvision train``'s default)."""
    for family in all_families():
        if family.tokenizer_kind == kind:
            return family
    raise ArvisionError(f"no family uses a {kind!r} tokenizer")
