"""A stand-in for the `snakemake` object, so that each rule's script also runs by hand:

    python scripts/baselines.py --input store=results/default/priors/test.h5 --output bicubic.nc \\
        --wildcards baseline=bicubic --params config_hash=manual run_name=manual

(PyPSA-Eur's habit of a mock `snakemake` object; here built from the command line.)
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import yaml


class _NoDates(yaml.SafeLoader):
    """YAML that keeps 2001-03-01 a string, as Snakemake's params would."""


_NoDates.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class Namedlist(list):
    """The part of Snakemake's Namedlist that scripts use: items by position, by name, and `get`."""

    def __init__(self, items: Iterable[tuple[str | None, Any]] = ()) -> None:
        super().__init__()
        self._names: dict[str, Any] = {}
        for name, value in items:
            if name is not None:
                if name in self._names:
                    raise ValueError(f"'{name}' given twice; give a list as {name}=[a, b]")
                self._names[name] = value
            self.extend(value if isinstance(value, list) else [value])

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_names"][name]
        except KeyError:
            raise AttributeError(f"no '{name}': give it as --<field> {name}=VALUE") from None

    def get(self, name: str, default: Any = None) -> Any:
        """The item called `name`, or `default`."""
        return self._names.get(name, default)


STAND_IN_FIELDS = ("input", "output", "log", "params", "wildcards", "resources")


def _item(text: str) -> tuple[str | None, Any]:
    """``name=value`` or ``value``; the value is YAML (4 -> int, [a, b] -> list, {k: v} -> dict)."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        name, value = None, text
    return name, yaml.load(value, Loader=_NoDates)  # noqa: S506 (a SafeLoader)


def stand_in(doc: str | None = None, argv: list[str] | None = None) -> SimpleNamespace:
    """A stand-in for the `snakemake` object of a rule's script, built from the command line.

    ``python scripts/sample.py --input store=s.h5 deterministic=d.pt residual=r.pt
    --output e.nc --params members=4 steps=6 seed=0`` gives ``snakemake.input.store``,
    ``snakemake.output[0]``, ``snakemake.params.members`` ... as the workflow would.
    Without ``--log``, the script logs to stderr.
    """
    parser = argparse.ArgumentParser(description=doc, epilog="each item is NAME=VALUE or VALUE; values are YAML")
    for field in STAND_IN_FIELDS:
        parser.add_argument(f"--{field}", nargs="+", default=[], metavar="ITEM")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    fields = {field: Namedlist(map(_item, getattr(args, field))) for field in STAND_IN_FIELDS}
    if not fields["log"]:
        fields["log"] = Namedlist([(None, None)])
    return SimpleNamespace(**fields, threads=args.threads, config={})


def with_cds_retries(config: dict, resources: Any) -> dict:
    """`config` of a data-source rule (`download`, `statics`) with the job's CDS attempts, when it has some.

    The attempts come as a resource, not a param, so changing them reruns nothing.
    """
    if resources.get("cds_retries") is not None:
        config["data"].setdefault("cds", {})["retries"] = resources.cds_retries
    return config
