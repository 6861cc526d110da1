"""Static checks of the per-rule conda environments in envs/.

Convention: an env file *lists every third-party package* that its rules import
(conda-forge first, pip only for what conda-forge lacks) and does not
pip-install the repository: ``pip install -e ../..`` would resolve pyproject's
full dependency list (exact torch pin, snakemake, ...) inside every env. The
rules reach the ``geodiff`` package through ``PYTHONPATH=<repo>/src``.

What "its rules import" means is computed here, not listed by hand: the rules
that name the env (``conda:``) give entry points (their ``script:``, or the
``geodiff <command>`` they run), and imports are followed through
``src/geodiff`` with :mod:`ast`. Imports guarded by ``try/except ImportError``
and ``if TYPE_CHECKING`` are optional and not required. Code that calls
``torch.compile`` needs a C++ compiler in the env too (inductor compiles C++ on CPUs,
Triton launchers on GPUs).

Versions: every env pins the versions pyproject.toml pins (same package, same
specifier; conda and PyPI names mapped), torch included, and the versions installed
beside the tests satisfy every env pin.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))

#: import name -> package name on conda-forge / PyPI (where they differ, or to be explicit)
MODULE_TO_PACKAGE = {
    "numpy": "numpy",
    "scipy": "scipy",
    "pandas": "pandas",
    "xarray": "xarray",
    "netCDF4": "netcdf4",
    "h5netcdf": "h5netcdf",
    "h5py": "h5py",
    "dask": "dask",
    "xarray_regrid": "xarray-regrid",
    "xesmf": "xesmf",
    "esmpy": "esmpy",
    "cf_xarray": "cf_xarray",
    "sparse": "sparse",
    "cfgrib": "cfgrib",
    "eccodes": "python-eccodes",
    "gribapi": "python-eccodes",
    "cdsapi": "cdsapi",
    "ecmwf": "ecmwf-datastores-client",
    "zarr": "zarr",
    "gcsfs": "gcsfs",
    "fsspec": "fsspec",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib-base",
    "tensorboard": "tensorboard",
    "torch": "pytorch",
    "jsonschema": "jsonschema",
    "mpi4py": "mpi4py",
    "metpy": "metpy",
    "pint": "pint",
    "requests": "requests",
    "PIL": "pillow",
}
#: what a module that calls ``torch.compile`` needs, written like an import
COMPILED = "torch.compile()"
#: conda/pip package names that provide the same modules as another name
PACKAGE_ALIASES = {"matplotlib": "matplotlib-base", "pytorch-gpu": "pytorch"}
#: imports that need a package of their own beyond their top-level module's
IMPLIED = {
    "torch.utils.tensorboard": "tensorboard",
    "xarray": "netcdf4",  # the canonical files are NetCDF: xarray needs an engine
    COMPILED: "cxx-compiler",  # inductor builds C++ (CPU) and Triton launchers (GPU) when it runs
}
#: conda name -> PyPI name of the same package, where they differ (for the pins of pyproject.toml).
#: conda's `eccodes` is the C library; its PyPI wheel `eccodeslib` carries its own build numbers
#: and pyproject's pin of it is about the wheel (see there), so it is compared with nothing.
CONDA_TO_PYPI = {"pytorch": "torch", "python-eccodes": "eccodes", "matplotlib-base": "matplotlib", "eccodes": None}


def load_env(path: Path) -> dict:
    """The parsed env file."""
    with open(path, encoding="utf-8") as fh:
        env = yaml.safe_load(fh)
    assert isinstance(env, dict), f"{path.name}: not a YAML mapping"
    return env


def spec_name(spec: str) -> str:
    """Package name of a conda or pip spec: ``conda-forge::xarray>=2024.1`` -> ``xarray``."""
    spec = spec.split("::")[-1].strip()
    return re.split(r"[\s=<>!~\[;]", spec, maxsplit=1)[0].lower()


def env_packages(env: dict) -> tuple[set[str], list[str]]:
    """Conda package names and raw pip entries of an env."""
    conda: set[str] = set()
    pip: list[str] = []
    for dep in env.get("dependencies", []):
        if isinstance(dep, str):
            conda.add(PACKAGE_ALIASES.get(spec_name(dep), spec_name(dep)))
        elif isinstance(dep, dict) and "pip" in dep:
            pip.extend(str(p) for p in dep["pip"])
    return conda, pip


def provided(env: dict) -> set[str]:
    """Every package name an env installs (conda and pip)."""
    conda, pip = env_packages(env)
    return conda | {spec_name(p) for p in pip if not p.startswith("-")}


def rule_blocks() -> list[str]:
    """The text of each rule in the workflow, one string per rule."""
    blocks: list[str] = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        if smk.is_file():
            blocks += re.split(r"^(?=rule \w+)", smk.read_text(), flags=re.M)[1:]
    return blocks


def entries_by_env() -> dict[str, list[tuple[Path, str | None]]]:
    """env file name -> entry points ``(python file, function or None)`` of the rules using it.

    A rule's ``conda:`` may choose between env files (``"a.yaml" if uses_gpu() else "b.yaml"``):
    each of them must serve the rule.
    """
    out: dict[str, list[tuple[Path, str | None]]] = {}
    for block in rule_blocks():
        conda = re.search(r"conda:\s*\n?(.*)", block)
        if conda is None:
            continue
        rule_entries: list[tuple[Path, str | None]] = []
        script = re.search(r"script:\s*\n?\s*[\"']([^\"']+\.py)[\"']", block)
        if script is not None:
            rule_entries.append((REPO / "scripts" / Path(script.group(1)).name, None))
        for command in re.findall(r"geodiff(?:\.cli)?\s+(train|sample|evaluate)\b", block):
            rule_entries.append((SRC / "geodiff" / "cli.py", f"cmd_{command}"))
        for env in re.findall(r"[\"']([^\"']+\.ya?ml)[\"']", conda.group(1)):
            out.setdefault(Path(env).name, []).extend(rule_entries)
    return out


def _optional_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try/except ImportError`` or ``if TYPE_CHECKING``."""
    optional: set[int] = set()
    for node in ast.walk(tree):
        guarded: list[ast.stmt] = []
        if isinstance(node, ast.Try) and any(
            h.type is not None and re.search(r"\b(ImportError|ModuleNotFoundError)\b", ast.unparse(h.type))
            for h in node.handlers
        ):
            guarded = node.body
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded = node.body
        for stmt in guarded:
            optional.update(id(n) for n in ast.walk(stmt) if isinstance(n, ast.Import | ast.ImportFrom))
    return optional


def imports_of(path: Path, function: str | None = None) -> set[str]:
    """Dotted module names imported by ``path`` (required ones only).

    With ``function``, the module-level imports plus those inside that function.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    optional = _optional_nodes(tree)
    if function is None:
        nodes = list(ast.walk(tree))
    else:
        nodes = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and fn.name == function:
                nodes += list(ast.walk(fn))
    names: set[str] = set()
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1]) if path.is_relative_to(SRC) else ""
    for node in nodes:
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # submodules
    return names


def calls_torch_compile(path: Path) -> bool:
    """Whether ``path`` calls ``torch.compile`` (as a call or a decorator)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(node, ast.Attribute) and ast.unparse(node) == "torch.compile" for node in ast.walk(tree))


def geodiff_file(module: str) -> Path | None:
    """The source file of a ``geodiff`` module, or None when ``module`` is not one."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(entries: list[tuple[Path, str | None]]) -> set[str]:
    """Third-party modules reached from ``entries`` through src/geodiff.

    Top-level names, plus the dotted names listed in :data:`IMPLIED` and :data:`COMPILED`
    when a file reached calls ``torch.compile``.
    """
    needed: set[str] = set()
    seen: set[Path] = set()
    todo = list(entries)
    while todo:
        path, function = todo.pop()
        key = path if function is None else path.with_name(f"{path.name}:{function}")
        if key in seen:
            continue
        seen.add(key)
        if calls_torch_compile(path):
            needed.add(COMPILED)
        for module in imports_of(path, function):
            top = module.split(".")[0]
            if top == "geodiff":
                # the package __init__ files on the way are imported too
                parts = module.split(".")
                for i in range(1, len(parts) + 1):
                    found = geodiff_file(".".join(parts[:i]))
                    if found is not None:
                        todo.append((found, None))
            elif top and top not in sys.stdlib_module_names and top != "snakemake":
                needed.add(top)
                needed.update(m for m in IMPLIED if module == m or module.startswith(m + "."))
    return needed


def test_env_files_exist_for_every_rule() -> None:
    used = entries_by_env()
    assert used, "no rule names a conda env"
    missing = sorted(name for name in used if not (REPO / "envs" / name).is_file())
    assert not missing, f"rules name env files that do not exist: {missing}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_is_well_formed(path: Path) -> None:
    env = load_env(path)
    assert env.get("name", "").startswith("geodiff-"), f"{path.name}: name should be geodiff-<family>"
    channels = env.get("channels", [])
    assert channels and channels[0] == "conda-forge", f"{path.name}: conda-forge must be the first channel"
    assert (
        "defaults" not in channels and "nodefaults" in channels
    ), f"{path.name}: add nodefaults, not defaults"
    deps = env.get("dependencies")
    assert isinstance(deps, list) and deps, f"{path.name}: no dependencies"
    pythons = [d for d in deps if isinstance(d, str) and spec_name(d) == "python"]
    assert len(pythons) == 1 and re.fullmatch(
        r"python\s*=\s*3\.\d+(\.\d+)?", pythons[0]
    ), f"{path.name}: pin python to a minor version (python=3.11), got {pythons}"
    conda, pip = env_packages(env)
    if pip:
        assert "pip" in conda, f"{path.name}: a pip: section needs pip in the conda dependencies"
    for entry in pip:
        assert not re.search(r"(^|\s)(-e\s+)?\.\.?(/\.\.)*/?$", entry), (
            f"{path.name}: pip entry {entry!r} installs the repository with all of pyproject's pins; "
            "list the dependencies instead (the rules use PYTHONPATH=src)"
        )


def test_same_python_everywhere() -> None:
    versions = set()
    for path in ENV_FILES:
        deps = load_env(path)["dependencies"]
        versions |= {d.replace(" ", "") for d in deps if isinstance(d, str) and spec_name(d) == "python"}
    assert len(versions) == 1, f"envs disagree on python: {versions}"
    minor = int(versions.pop().split(".")[1])
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = re.search(r">=\s*3\.(\d+)", requires)
    assert floor is None or minor >= int(
        floor.group(1)
    ), f"python=3.{minor} is below requires-python {requires}"


@pytest.mark.parametrize("name", sorted(entries_by_env()))
def test_env_provides_every_import(name: str) -> None:
    entries = entries_by_env()[name]
    assert entries, f"rules using {name} have neither script: nor a geodiff command"
    env = load_env(REPO / "envs" / name)
    have = provided(env)
    needed = third_party_imports(entries)
    unknown = sorted(m for m in needed if m not in MODULE_TO_PACKAGE and m not in IMPLIED)
    assert not unknown, f"add the conda package of {unknown} to MODULE_TO_PACKAGE in {Path(__file__).name}"
    packages = {IMPLIED[m] if m in IMPLIED else MODULE_TO_PACKAGE[m] for m in needed}
    missing = sorted(packages - have)
    assert not missing, f"envs/{name} lacks {missing}, imported by its rules ({sorted(needed)})"


def test_shell_rules_do_not_bypass_their_env() -> None:
    # the `geodiff` console script is not in a conda env (the repo is not pip-installed there);
    # a bare `geodiff` would run the launching environment's copy instead
    offenders = [
        block.split(":", 1)[0]
        for block in rule_blocks()
        if re.search(r"conda:", block)
        and re.search(r"(?<!-m )(?<![.\w/-])geodiff\s+(train|sample|evaluate)\b", block)
    ]
    assert not offenders, f"use `python -m geodiff ...` (PYTHONPATH=src) in: {offenders}"


def test_code_that_compiles_needs_a_compiler() -> None:
    # the priors are torch.compile'd (geodiff.physics.priors): their rules' env must hold a C++ compiler
    assert COMPILED in third_party_imports([(REPO / "scripts" / "priors.py", None)])
    assert COMPILED not in third_party_imports([(REPO / "scripts" / "download.py", None)])


def pyproject_requirements() -> dict[str, Requirement]:
    """PyPI name -> requirement, of pyproject.toml's dependencies and optional dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {Requirement(s).name.lower(): Requirement(s) for s in specs}


def conda_pins(path: Path) -> dict[str, SpecifierSet]:
    """PyPI name -> version specifiers of an env's packages that pyproject.toml also lists.

    conda's ``name=1.2`` (and ``name=1.2=build``) is read as ``==1.2``; pip entries as they are.
    """
    conda, pip = env_packages(load_env(path))
    specs = [d for d in load_env(path)["dependencies"] if isinstance(d, str)] + pip
    pins = {}
    for spec in specs:
        name = spec_name(spec)
        pypi = CONDA_TO_PYPI.get(name, name)
        if pypi is None:
            continue
        version = spec.split("::")[-1].strip()[len(name):].strip()
        version = re.sub(r"^=([^=<>!].*?)(=.*)?$", r"==\1", version)  # conda's exact pin, build string dropped
        pins[pypi] = SpecifierSet(version)
    return pins


def test_torch_pin_is_the_same_everywhere() -> None:
    torch = pyproject_requirements()["torch"]
    assert re.fullmatch(r"==\d+\.\d+\.\d+", str(torch.specifier)), f"pyproject.toml: pin torch exactly, not {torch}"
    with_torch = {path.name: conda_pins(path)["torch"] for path in ENV_FILES if "torch" in conda_pins(path)}
    assert with_torch, "no env installs pytorch"
    differing = {name: str(spec) for name, spec in with_torch.items() if spec != torch.specifier}
    assert not differing, f"envs pin pytorch other than pyproject.toml's torch{torch.specifier}: {differing}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_are_pyproject_pins(path: Path) -> None:
    required = pyproject_requirements()
    differing = {
        name: f"{spec or '(none)'} here, {required[name].specifier or '(none)'} in pyproject.toml"
        for name, spec in conda_pins(path).items()
        if name in required and spec != required[name].specifier
    }
    assert not differing, f"{path.name}: {differing}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_tested_versions_satisfy_env_pins(path: Path) -> None:
    # the versions installed beside these tests exist together: an env whose pins they meet can be solved
    unmet = {}
    for name, spec in conda_pins(path).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # conda-only packages (esmpy, xesmf, ...) and the compiler
        if not spec.contains(installed, prereleases=True):
            unmet[name] = f"{installed} installed, {spec} pinned"
    assert not unmet, f"{path.name}: {unmet}"


def test_gpu_env_is_the_cpu_env_with_the_cuda_build() -> None:
    cpu, gpu = (load_env(REPO / "envs" / name)["dependencies"] for name in ("train.yaml", "train-cuda.yaml"))
    torch_cpu = [d for d in cpu if spec_name(d) == "pytorch"]
    torch_gpu = [d for d in gpu if spec_name(d) == "pytorch"]
    assert len(torch_gpu) == 1 and re.fullmatch(r"pytorch=[\d.]+=cuda\*", torch_gpu[0].replace(" ", "")), (
        f"envs/train-cuda.yaml must select pytorch's CUDA build (pytorch=<version>=cuda*), not {torch_gpu}"
    )
    assert len(torch_cpu) == 1 and "cuda" not in torch_cpu[0], f"envs/train.yaml must stay CPU-capable: {torch_cpu}"
    assert [d for d in cpu if d not in torch_cpu] == [d for d in gpu if d not in torch_gpu], (
        "envs/train.yaml and envs/train-cuda.yaml must list the same packages but for pytorch's build"
    )


def test_jobs_import_geodiff_from_the_checkout(tmp_path: Path) -> None:
    """The envs do not install geodiff: every job gets the checkout's src/ on PYTHONPATH (common.smk,
    geodiff.workflow.export_source_path)."""
    from workflow_run import copy_workflow, snakemake

    repo = copy_workflow(tmp_path)
    with open(repo / "Snakefile", "a") as fh:
        fh.write('\n\nrule probe:\n    output:\n        "probe.txt",\n    shell:\n        "echo $PYTHONPATH > {output}"\n')
    snakemake(repo, "probe.txt", "--cores", "1", "--configfile", "config/test.yaml")
    assert str(repo / "src") in (repo / "probe.txt").read_text().strip().split(":")
