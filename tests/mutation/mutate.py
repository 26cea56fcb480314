#!/usr/bin/env python
"""Development mutation check: plant one small bug at a time in a core module and see
whether the module's tests notice (not part of CI; see docs/testing.md).

For every module in ``--modules`` the script parses the source with :mod:`ast`, lists
every candidate mutant (a flipped ``+``/``-`` or ``*``/``/``, a comparison turned into
its neighbour, an integer constant off by one, a changed float constant, a dropped term
or factor, a negated condition, ``and``/``or`` swapped, ``min``/``max`` swapped, a
dropped in-place call or augmented assignment, a ``return`` of ``None`` ...), draws a
fixed sample (``--max-mutants``, seeded by ``--seed`` and the module path, so two runs
over the same source draw the same mutants), and for each one writes the mutated file,
runs the module's mapped test files with
``python -m pytest -x -q -p no:cacheprovider <tests>`` under a timeout, and restores the
file byte for byte (in a ``finally``, also on Ctrl-C). A mutant is *killed* when pytest
fails (or times out), *survived* when every test passes.

The tests run in a child forked from a warm worker process that imported torch, numba...
once (``--no-fork``: a fresh ``python -m pytest`` each time). Tests that already fail on
the unmutated code are deselected (and listed in the report).

By default the script never touches the working tree it lives in: it copies the
repository (the working tree without ``.git``, or with ``--rev`` a commit via
``git archive``) into a private directory (``--workdir``, reused and emptied first, or a
fresh temporary one), links the ``package_dir`` mappings of setup.cfg (``neuroplastic.kernels``
-> ``kernels/``...) inside the copied package, and runs pytest there with
``PYTHONPATH`` set to the copy (it checks that the copy is what gets imported).
``--in-place`` mutates ``--root`` itself: only ever do that in a private clone.

Examples::

    python tests/mutation/mutate.py                       # every module, 30 mutants each
    python tests/mutation/mutate.py --modules neuroplastic/metrics.py --max-mutants 0  # all
    python tests/mutation/mutate.py --modules neuroplastic/sparse.py --list
    python tests/mutation/mutate.py --rev HEAD --workdir /tmp/np_mut --json mutation.json
    python tests/mutation/mutate.py --only 'neuroplastic.plugins.gpm:1*'
"""

from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import fnmatch
import glob
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]

#: module -> test files (glob patterns, relative to the repository root; missing ones are
#: skipped). Fast, targeted files first: pytest runs with ``-x`` in this order.
MODULE_TESTS: dict[str, list[str]] = {
    "neuroplastic/config.py": ["tests/test_config*.py", "tests/test_doc_configs.py", "tests/test_bad_input.py"],
    "datasets/mnist.py": ["tests/test_*mnist*.py", "tests/test_*idx*.py", "tests/test_loader*.py",
                          "tests/test_datasets.py", "tests/test_bad_input.py"],
    "neuroplastic/neurons/functional.py": ["tests/test_maths_neurons.py", "tests/test_neurons.py"],
    "neuroplastic/surrogate.py": ["tests/test_maths_surrogate.py", "tests/test_surrogate.py",
                                  "tests/test_maths_neurons.py"],
    "neuroplastic/plugins/hlop.py": ["tests/test_maths_hlop.py", "tests/test_hlop_rate.py", "tests/test_hlop.py",
                                     "tests/test_maths_plugins_boundaries.py", "tests/test_seeds.py",
                                     "tests/test_bad_input.py"],
    # (tests/test_distributed.py last: its two-rank runs reach the branches only several
    # ranks take; ~45 s)
    "neuroplastic/plugins/projection.py": ["tests/test_maths_hlop.py", "tests/test_maths_gpm_ewc.py",
                                           "tests/test_hlop.py", "tests/test_gpm_ewc.py", "tests/test_seeds.py",
                                           "tests/test_distributed.py"],
    "neuroplastic/plugins/ewc.py": ["tests/test_maths_gpm_ewc.py", "tests/test_gpm_ewc.py", "tests/test_seeds.py",
                                    "tests/test_bad_input.py", "tests/test_distributed.py"],
    "neuroplastic/plugins/gpm.py": ["tests/test_maths_gpm_ewc.py", "tests/test_gpm_ewc.py", "tests/test_seeds.py",
                                    "tests/test_bad_input.py", "tests/test_distributed.py"],
    "neuroplastic/sparse.py": ["tests/test_maths_sparse.py", "tests/test_sparse.py", "tests/test_granet.py",
                               "tests/test_seeds.py"],
    "neuroplastic/plugins/granet.py": ["tests/test_maths_sparse.py", "tests/test_granet.py",
                                       "tests/test_maths_plugins_boundaries.py", "tests/test_seeds.py",
                                       "tests/test_bad_input.py", "tests/test_distributed.py"],
    "neuroplastic/continual.py": ["tests/test_config_checks.py", "tests/test_maths_runner.py", "tests/test_resume.py"],
    "neuroplastic/metrics.py": ["tests/test_maths_metrics.py", "tests/test_metrics.py"],
}

#: source lines never mutated: wall-clock bookkeeping (timings reported in metrics.json
#: cannot be pinned by a test) and lines marked ``# pragma: no mutate``
DEFAULT_EXCLUDE = r"perf_counter|\b(hebbian_s|projection_s|svd_s|wall_s)\b|pragma: no mutate"

COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache",
                                     "*.egg-info", "runs", "build", "dist")


# -- mutants ---------------------------------------------------------------------------
@dataclass
class Mutant:
    module: str
    line: int
    col: int
    end_line: int
    end_col: int
    op: str
    original: str
    replacement: str
    id: str = ""
    status: str = "pending"
    seconds: float = 0.0
    detail: str = ""

    def key(self) -> tuple:
        return (self.line, self.col, self.end_line, self.end_col, self.replacement)


_BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
               ast.FloorDiv: ast.Mult, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv,
               ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr}
_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str | bytes))


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes whose whole subtree is never mutated: docstrings, f-strings, raise
    statements (error messages), annotations, decorators, ``__all__``, TYPE_CHECKING blocks."""
    skip: set[int] = set()

    def mark(node):
        if node is not None:
            for n in ast.walk(node):
                skip.add(id(n))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                mark(first)
        if isinstance(node, ast.JoinedStr | ast.Raise | ast.Assert | ast.Import | ast.ImportFrom):
            mark(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
            for a in [*node.args.args, *node.args.posonlyargs, *node.args.kwonlyargs, node.args.vararg,
                      node.args.kwarg]:
                if a is not None:
                    mark(a.annotation)
            for d in node.decorator_list:
                mark(d)
        if isinstance(node, ast.ClassDef):
            for d in node.decorator_list:
                mark(d)
        if isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            mark(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            mark(node)
        if isinstance(node, ast.Expr) and _is_str(node.value):  # bare strings (comments)
            mark(node)
    return skip


def _u(node: ast.AST) -> str:
    return "(" + ast.unparse(node) + ")"


def enumerate_mutants(path: Path, module: str, exclude: str = DEFAULT_EXCLUDE) -> list[Mutant]:
    """Every candidate mutant of the source file ``path`` (position-sorted, deduplicated)."""
    src = path.read_text()
    tree = ast.parse(src)
    lines = src.splitlines()
    skip = _skipped_nodes(tree)
    excl = re.compile(exclude) if exclude else None
    out: dict[tuple, Mutant] = {}

    def add(node, op: str, replacement: str):
        seg = ast.get_source_segment(src, node)
        if seg is None:
            return
        if excl is not None and any(excl.search(lines[i - 1]) for i in range(node.lineno, node.end_lineno + 1)):
            return
        m = Mutant(module, node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, op,
                   " ".join(seg.split()), replacement)
        out.setdefault(m.key(), m)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp) and not (_is_str(node.left) or _is_str(node.right)):
            new = _BINOP_SWAP.get(type(node.op))
            if new is not None:
                add(node, f"binop {type(node.op).__name__}->{new.__name__}",
                    _u(ast.BinOp(left=node.left, op=new(), right=node.right)))
            if isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
                add(node, "drop right operand", _u(node.left))
                if isinstance(node.op, ast.Add | ast.Mult):
                    add(node, "drop left operand", _u(node.right))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            new = _CMP_SWAP.get(type(node.ops[0]))
            if new is not None:
                add(node, f"compare {type(node.ops[0]).__name__}->{new.__name__}",
                    _u(ast.Compare(left=node.left, ops=[new()], comparators=node.comparators)))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            add(node, f"boolop {type(node.op).__name__}->{new.__name__}", _u(ast.BoolOp(op=new(), values=node.values)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            add(node, f"drop unary {type(node.op).__name__}", _u(node.operand))
        elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes) and node.value is not None:
            v = node.value
            if isinstance(v, bool):
                add(node, "constant bool", repr(not v))
            elif isinstance(v, int) and abs(v) < 1000:  # not seed offsets / primes: any value is as valid
                add(node, "constant int+1", repr(v + 1))
                add(node, "constant int-1", "(" + repr(v - 1) + ")")
            elif isinstance(v, float):
                nv = 1.0 if v == 0 else (v + 1.0 if abs(v) < 1 else v * 2)
                add(node, "constant float", "(" + repr(nv) + ")")
        elif isinstance(node, ast.If | ast.While | ast.IfExp):
            add(node.test, "negate condition", "(not " + _u(node.test) + ")")
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            add(node, "return None", "return None")
        elif isinstance(node, ast.AugAssign):
            new = _BINOP_SWAP.get(type(node.op))
            if new is not None and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
                add(node, f"augassign {type(node.op).__name__}->{new.__name__}",
                    ast.unparse(ast.AugAssign(target=node.target, op=new(), value=node.value)))
            add(node, "drop statement", "pass")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            add(node, "drop call statement", "pass")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in ("float", "int"):
            add(node, f"name {node.id}->{'int' if node.id == 'float' else 'float'}",
                "int" if node.id == "float" else "float")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            other = "max" if node.func.id == "min" else "min"
            add(node, f"call {node.func.id}->{other}",
                _u(ast.Call(func=ast.Name(id=other, ctx=ast.Load()), args=node.args, keywords=node.keywords)))
    muts = sorted(out.values(), key=lambda m: (m.line, m.col, m.op, m.replacement))
    valid = []
    for m in muts:
        try:
            compile(apply_mutant(src, m), str(path), "exec")
        except SyntaxError:
            continue
        valid.append(m)
    return valid


def apply_mutant(src: str, m: Mutant) -> str:
    """``src`` with the span of ``m`` replaced (columns are UTF-8 byte offsets, as in ast)."""
    data = src.encode()
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    a = starts[m.line - 1] + m.col
    b = starts[m.end_line - 1] + m.end_col
    return (data[:a] + m.replacement.encode() + data[b:]).decode()


def sample(mutants: list[Mutant], n: int, seed: int, module: str) -> list[Mutant]:
    """A fixed sample of ``n`` mutants (all for ``n <= 0``), ids ``<module stem>:<k>``."""
    picked = list(mutants)
    if 0 < n < len(picked):
        rng = random.Random(f"{seed}:{module}")
        picked = rng.sample(picked, n)
        picked.sort(key=lambda m: (m.line, m.col, m.op, m.replacement))
    stem = module.replace("/", ".").removesuffix(".py")
    for k, m in enumerate(picked):
        m.id = f"{stem}:{k}"
    return picked


# -- the private copy ------------------------------------------------------------------
def package_links(root: Path) -> dict[str, str]:
    """``{"neuroplastic/kernels": "kernels", ...}`` from setup.cfg's ``package_dir``."""
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    raw = cfg.get("options", "package_dir", fallback="")
    links = {}
    for line in raw.strip().splitlines():
        if "=" not in line:
            continue
        pkg, folder = (s.strip() for s in line.split("=", 1))
        target = pkg.replace(".", "/")
        if target != folder:
            links[target] = folder
    return links


def _clean(dest: Path) -> None:
    """Empty a reused private copy, keeping only compiled numba caches (``__pycache__``
    directories hold nothing else: bytecode is never written there by this script)."""
    for item in dest.iterdir():
        if item.is_symlink() or item.is_file():
            item.unlink()
        elif item.name != "__pycache__":
            _clean(item)
            if not any(item.iterdir()):
                item.rmdir()


def make_copy(root: Path, dest: Path, rev: str | None = None) -> Path:
    """Copy the repository into ``dest`` (the working tree without .git and caches, or the
    commit ``rev`` via ``git archive``) and link the mapped packages."""
    dest.mkdir(parents=True, exist_ok=True)
    _clean(dest)
    if rev:
        tar = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", rev], capture_output=True)
        if tar.returncode != 0:
            raise SystemExit(f"mutate: git archive {rev} failed: {tar.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
            tf.extractall(dest, filter="data")
    else:
        for item in root.iterdir():
            if item.name in (".git",) or COPY_IGNORE(str(root), [item.name]):
                continue
            target = dest / item.name
            if item.is_dir():
                shutil.copytree(item, target, ignore=COPY_IGNORE, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(item, target)
    for pkg, folder in package_links(root).items():
        link = dest / pkg
        if not link.exists():
            link.symlink_to(os.path.relpath(dest / folder, link.parent))
    return dest


def run_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant of the same size and mtime must never hit a stale .pyc
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(k, "1")
    return env


def check_import(root: Path, env: dict[str, str]) -> None:
    code = ("import neuroplastic, neuroplastic.datasets, neuroplastic.kernels;"
            "print(neuroplastic.__file__); print(neuroplastic.datasets.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    files = out.stdout.split()
    if out.returncode != 0 or not files or not all(Path(f).resolve().is_relative_to(root.resolve()) for f in files):
        raise SystemExit(f"mutate: the copy at {root} is not what gets imported ({out.stdout.strip()} "
                         f"{out.stderr.strip()[-300:]})")


# -- running ---------------------------------------------------------------------------
#: imported once by the warm worker before it forks a child per test run (never
#: ``neuroplastic`` itself: every child imports the package, mutant included, afresh)
PRELOAD = ("numpy", "torch", "scipy", "h5py", "numba", "sklearn", "matplotlib", "tqdm", "nir", "pytest",
           "hypothesis")


def _pytest_args(tests: list[str], extra: list[str], first_failure: bool) -> list[str]:
    return [*(["-x"] if first_failure else ["-rf"]), "-q", "-p", "no:cacheprovider", *extra, *tests]


class Runner:
    """Runs pytest in the private copy, either in a fresh ``python -m pytest`` process per
    run (``fork=False``) or in a child forked from a warm worker process that imported
    torch, numba, ... once (the default: the same tests, a few seconds less per mutant)."""

    def __init__(self, root: Path, env: dict[str, str], fork: bool = True) -> None:
        self.root, self.env, self.fork = root, env, fork
        self.current: int | None = None  # process group of the running tests
        self.worker: subprocess.Popen | None = None
        self.out = Path(tempfile.mkstemp(prefix="np_mutate_", suffix=".log")[1])
        if fork:
            self.worker = subprocess.Popen([sys.executable, str(HERE), "--_worker"], cwd=root, env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            ready = self.worker.stdout.readline()
            if not ready.startswith("ready"):
                raise SystemExit(f"mutate: the test worker did not start ({ready.strip()})")

    def run(self, tests: list[str], extra: list[str], timeout: float,
            first_failure: bool = True) -> tuple[str, float, str]:
        """``(status, seconds, output)``: status ``passed``, ``failed`` or ``timeout``."""
        args = _pytest_args(tests, extra, first_failure)
        t0 = time.perf_counter()
        if self.worker is None:
            with open(self.out, "w") as fh:
                child = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=self.root, env=self.env,
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
                self.current = child.pid
                try:
                    rc = child.wait(timeout=timeout)
                    status = "passed" if rc == 0 else "failed"
                except subprocess.TimeoutExpired:
                    self.kill_current()
                    child.wait()
                    status = "timeout"
        else:
            self.worker.stdin.write(json.dumps({"args": args, "out": str(self.out)}) + "\n")
            self.worker.stdin.flush()
            self.current = int(json.loads(self.worker.stdout.readline())["pid"])
            ready, _, _ = select.select([self.worker.stdout], [], [], timeout)
            timed_out = not ready
            if timed_out:
                self.kill_current()
            rc = json.loads(self.worker.stdout.readline())["rc"]
            status = "timeout" if timed_out else ("passed" if rc == 0 else "failed")
        self.current = None
        return status, time.perf_counter() - t0, self.out.read_text(errors="replace")

    def kill_current(self) -> None:
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.current, signal.SIGKILL)

    def close(self) -> None:
        self.kill_current()
        if self.worker is not None:
            with contextlib.suppress(Exception):
                self.worker.stdin.close()
                self.worker.wait(timeout=10)
            if self.worker.poll() is None:
                self.worker.kill()
        self.out.unlink(missing_ok=True)


def worker_main() -> int:
    """The warm worker: preload, then for each request fork a child that runs pytest with its
    output in a file; report the child's pid, then its exit code."""
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: its own process group, pytest, exit
            rc = 99
            try:
                os.setsid()
                fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                import pytest

                rc = int(pytest.main(req["args"]))
            except BaseException:  # noqa: BLE001 - the exit code says it
                pass
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(rc)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


_RUNNER: Runner | None = None


def run_tests(root: Path, tests: list[str], env: dict[str, str], timeout: float,
              extra: list[str], first_failure: bool = True) -> tuple[str, float, str]:
    """Run ``tests`` with the current runner (see :class:`Runner`)."""
    return _RUNNER.run(tests, extra, timeout, first_failure)


def _kill_child() -> None:
    if _RUNNER is not None:
        _RUNNER.kill_current()


def _tail(out: str, n: int = 3) -> str:
    return "\n".join(out.strip().splitlines()[-n:])


def resolve_tests(root: Path, patterns: list[str]) -> list[str]:
    found: list[str] = []
    for pat in patterns:
        for f in sorted(glob.glob(str(root / pat))):
            rel = os.path.relpath(f, root)
            if rel not in found:
                found.append(rel)
    return found


def mutate_module(root: Path, module: str, tests: list[str], args, env, log) -> dict:
    path = root / module
    original = path.read_bytes()
    stat = path.stat()
    all_mutants = enumerate_mutants(path, module, args.exclude)
    chosen = sample(all_mutants, args.max_mutants, args.seed, module)
    if args.only:
        chosen = [m for m in chosen if any(fnmatch.fnmatch(m.id, pat) for pat in args.only)]
    res = {"module": module, "tests": tests, "sha256": hashlib.sha256(original).hexdigest(),
           "candidates": len(all_mutants), "sampled": len(chosen), "mutants": []}
    if args.list:
        for m in chosen:
            log(f"  {m.id:<40} line {m.line:<4} {m.op:<28} {m.original[:60]!r} -> {m.replacement[:60]!r}")
        res["mutants"] = [asdict(m) for m in chosen]
        return res
    if not tests:
        log(f"{module}: no test files found for {MODULE_TESTS.get(module)}; skipped")
        res["error"] = "no tests"
        return res
    for pyc in (path.parent / "__pycache__").glob(path.stem + ".*.pyc"):
        pyc.unlink()
    # baseline: the unmutated code must pass; tests that already fail there (a colleague's
    # work in progress, missing data) are deselected and listed in the report
    extra = list(args.pytest_args)
    if importlib.util.find_spec("hypothesis") is not None:
        # the same examples for every mutant, no shrinking (tests/conftest.py's profile)
        extra[:0] = ["--hypothesis-seed=0", "--hypothesis-profile=mutation"]
    status, base_s, out = run_tests(root, tests, env, args.baseline_timeout, extra, first_failure=False)
    failing = sorted(set(re.findall(r"^FAILED (\S+?)(?: - .*)?$", out, re.M)))
    if status == "failed" and failing:
        res["deselected"] = failing
        log(f"{module}: {len(failing)} test(s) fail on the unmutated code, deselected: {' '.join(failing)}")
        extra += [a for f in failing for a in ("--deselect", f)]
        status, base_s, out = run_tests(root, tests, env, args.baseline_timeout, extra)
    res["baseline_s"] = round(base_s, 2)
    if status != "passed":
        log(f"{module}: the tests fail on the unmutated code ({status}); skipped\n{_tail(out, 15)}")
        res["error"] = f"baseline {status}: {_tail(out)}"
        return res
    timeout = args.timeout or max(45.0, 4 * base_s + 30)
    log(f"{module}: {len(chosen)} of {len(all_mutants)} mutants, tests {' '.join(tests)} "
        f"(baseline {base_s:.1f} s, timeout {timeout:.0f} s)")
    src = original.decode()
    try:
        for m in chosen:
            path.write_text(apply_mutant(src, m))
            try:
                status, m.seconds, out = run_tests(root, tests, env, timeout, extra)
            finally:
                path.write_bytes(original)
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            m.status = "survived" if status == "passed" else ("timeout" if status == "timeout" else "killed")
            m.seconds = round(m.seconds, 2)
            if m.status == "survived":
                m.detail = _tail(out)
            mark = {"killed": ".", "timeout": "T", "survived": "S"}[m.status]
            log(f"  {mark} {m.id:<40} line {m.line:<4} {m.op:<28} {m.original[:50]!r} -> {m.replacement[:50]!r}"
                f"  ({m.seconds:.1f} s)")
            res["mutants"].append(asdict(m))
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.read_bytes() == original
    killed = sum(m["status"] in ("killed", "timeout") for m in res["mutants"])
    res["killed"], res["survived"] = killed, len(res["mutants"]) - killed
    res["score"] = round(100.0 * killed / max(len(res["mutants"]), 1), 1)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--modules", nargs="+", default=list(MODULE_TESTS),
                   help="modules to mutate (paths relative to the repository; default: all mapped)")
    p.add_argument("--max-mutants", type=int, default=30, help="mutants sampled per module (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutant sample")
    p.add_argument("--json", type=Path, help="write the report (JSON) here")
    p.add_argument("--root", type=Path, default=REPO, help="the repository (default: the one holding this script)")
    p.add_argument("--workdir", type=Path, help="private copy to run in (reused and refreshed; default: a temp dir)")
    p.add_argument("--rev", help="measure this commit (git archive) instead of the working tree")
    p.add_argument("--in-place", action="store_true", help="mutate --root itself (private clones only!)")
    p.add_argument("--tests", nargs="+", help="test files for every module instead of the built-in map")
    p.add_argument("--timeout", type=float, default=0,
                   help="seconds per mutant (default: 4x baseline + 30, at least 45)")
    p.add_argument("--baseline-timeout", type=float, default=900)
    p.add_argument("--exclude", default=DEFAULT_EXCLUDE, help="regex: source lines never mutated")
    p.add_argument("--only", nargs="+", default=[],
                   help="run only these mutant ids or glob patterns (e.g. neuroplastic.metrics:3)")
    p.add_argument("--list", action="store_true", help="list the sampled mutants, run nothing")
    p.add_argument("--no-fork", action="store_true",
                   help="a fresh python process per test run (default: fork from a warm worker)")
    p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                   help="extra pytest arguments (last option; e.g. -m 'not slow')")
    args = p.parse_args(argv)

    root = args.root.resolve()
    tmp = None
    if args.in_place or args.list:
        work = root
    else:
        if args.workdir:
            work = make_copy(root, args.workdir.resolve(), args.rev)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="np_mutate_")
            work = make_copy(root, Path(tmp.name) / "repo", args.rev)
    env = run_env(work)
    global _RUNNER
    if not args.list:
        check_import(work, env)
        _RUNNER = Runner(work, env, fork=not args.no_fork)

    def on_signal(signum, frame):
        _kill_child()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def log(msg):
        print(msg, flush=True)

    head = subprocess.run(["git", "-C", str(root), "rev-parse", args.rev or "HEAD"], capture_output=True, text=True)
    report = {"root": str(root), "workdir": str(work), "seed": args.seed, "max_mutants": args.max_mutants,
              "rev": head.stdout.strip() + ("" if args.rev else " + working tree"),
              "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else argv,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "modules": {}}
    t_start = time.perf_counter()
    try:
        for module in args.modules:
            stem = module.replace("/", ".").removesuffix(".py")
            if args.only and not any(fnmatch.fnmatch(stem, pat.split(":")[0]) for pat in args.only):
                continue  # no chosen mutant here: skip its baseline too
            if not (work / module).is_file():
                log(f"{module}: no such file; skipped")
                continue
            tests = resolve_tests(work, args.tests or MODULE_TESTS.get(module, []))
            res = mutate_module(work, module, tests, args, env, log)
            report["modules"][module] = res
            if args.json and not args.list:
                _write(args.json, report)
    except KeyboardInterrupt:
        log("interrupted: the mutated file was restored")
        if args.json:
            _write(args.json, report)
        return 130
    finally:
        if _RUNNER is not None:
            _RUNNER.close()
        if tmp is not None:
            tmp.cleanup()
    if args.list:
        return 0
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    tot_k = sum(r.get("killed", 0) for r in report["modules"].values())
    tot_n = sum(r.get("killed", 0) + r.get("survived", 0) for r in report["modules"].values())
    report["killed"], report["total"] = tot_k, tot_n
    report["score"] = round(100.0 * tot_k / max(tot_n, 1), 1)
    log("\nmodule                                   killed  total  score")
    for module, r in report["modules"].items():
        if "score" in r:
            log(f"{module:<40} {r['killed']:>6} {r['killed'] + r['survived']:>6} {r['score']:>5.1f} %")
        else:
            log(f"{module:<40} {'-':>6} {'-':>6}   ({r.get('error', 'listed')})")
    log(f"{'overall':<40} {tot_k:>6} {tot_n:>6} {report['score']:>5.1f} %  ({report['elapsed_s']:.0f} s)")
    surv = [m for r in report["modules"].values() for m in r.get("mutants", []) if m["status"] == "survived"]
    if surv:
        log("\nsurvivors:")
        for m in surv:
            log(f"  {m['id']:<40} line {m['line']:<4} {m['op']:<28} {m['original'][:60]!r} -> "
                f"{m['replacement'][:60]!r}")
    if args.json:
        _write(args.json, report)
    return 0


def _write(path: Path, report: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(worker_main() if sys.argv[1:] == ["--_worker"] else main())
