"""``mrq sweep``: models x profiles x methods x datasets on Dask, into one results table.

A sweep file (YAML) names the models, the profiles, the re-quantization methods and the data
sets; :func:`load_plan` validates all of it before any work (every model loads, every profile
loads, every data set matches every model's inputs, labels have one entry per sample) and
expands it into cells (one results row each) and shards (sample ranges).

:func:`run_sweep` then schedules on a Dask cluster (a local one, or a running scheduler): one
task per cell re-quantizes, one task per (model, data set, shard) simulates that shard for
every cell of the model (the input model's float reference is computed once per batch and
shared). Each finished shard's statistics are stored at once, atomically, under
``OUT/state/`` keyed by a content hash (model, profile, method, data, mrq version), so a re-run
computes only what is missing: a crash or a killed client loses only the tasks in flight, a
killed worker loses nothing (Dask retries its tasks elsewhere). Rows are reduced from the
stored shard statistics (:mod:`mrq.sweep_cells`: exact sums, so the split does not matter).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import yaml

import mrq
from mrq import safe_yaml, sweep_cells
from mrq.errors import MrqError
from mrq.sweep_cells import BUILTIN_METHODS, SWITCHES, Cell, Method, Shard, shard_key

log = logging.getLogger("mrq")

# a sweep file is a page of YAML; the bound keeps a mistyped path (a model, /dev/zero) unparsed
MAX_SWEEP_BYTES = 1 << 20
DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH_SIZE = 100
DEFAULT_CALIBRATION_SAMPLES = 512
CONNECT_TIMEOUT_S = 5
WORKER_WAIT_S = 30
# a task whose worker died runs again elsewhere this many times before its cell is marked failed
RETRIES = 3
STATE_DIR = "state"
SWEEP_EXTRA = 'pip install "mrq-nna[sweep]"'

_TOP_KEYS = ("models", "profiles", "methods", "datasets", "shard_size", "batch_size")
_DATASET_KEYS = ("name", "inputs", "labels", "calibration", "calibration_samples")
_METHOD_KEYS = (*SWITCHES, "disable")


class SweepError(MrqError):
    """A sweep file, its inputs or the cluster are unusable (one line, before any work)."""


def _file_list(path: str) -> list:
    from mrq.datasets import shard_paths
    return shard_paths(path) if os.path.isdir(path) else [path]


@dataclass(frozen=True)
class Dataset:
    name: str
    inputs: str
    labels: str | None
    calibration: str | None
    calibration_samples: int
    num_samples: int
    digest: str          # inputs, labels and calibration content


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    digest: str
    inputs: tuple
    shapes: tuple        # per input, the shape of one sample (None: any size)


@dataclass(frozen=True)
class ProfileEntry:
    source: str          # the name or path as written (the workers load it again)
    name: str
    digest: str          # of the validated profile with every default filled in


@dataclass
class Plan:
    path: str
    models: list
    profiles: list
    methods: list
    datasets: list
    shard_size: int
    batch_size: int
    cells: list = field(default_factory=list)

    def shards(self, dataset: Dataset) -> list:
        return [Shard(lo, min(lo + self.shard_size, dataset.num_samples))
                for lo in range(0, dataset.num_samples, self.shard_size)]

    def groups(self) -> dict:
        """(model path, data set name) -> its cells, in plan order: one simulation task per
        group and shard."""
        out: dict = {}
        for cell in self.cells:
            out.setdefault((cell.model_path, cell.dataset), []).append(cell)
        return out


# --------------------------------------------------------------------------------------------
# The sweep file
# --------------------------------------------------------------------------------------------


def _read_yaml(path: str):
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SWEEP_BYTES + 1)
    except FileNotFoundError:
        raise SweepError(f"{path}: no such file") from None
    except OSError as exc:
        raise SweepError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_SWEEP_BYTES:
        raise SweepError(f"{path}: larger than {MAX_SWEEP_BYTES >> 10} KiB; a sweep file is a page "
                         f"of YAML (is this the right file?)")
    try:
        data = safe_yaml.safe_load(raw.decode("utf-8"))
    except safe_yaml.YamlLimitError as exc:
        raise SweepError(f"{path}: {exc}; a sweep file is a page of YAML") from None
    except UnicodeDecodeError as exc:
        raise SweepError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SweepError(f"{path}: YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise SweepError(f"{path}: nested too deeply to be a sweep file") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: the top level must be a mapping with {', '.join(_TOP_KEYS[:4])}")
    return data


class _Fields:
    """Field access that fails with one line naming the sweep file and the field."""

    def __init__(self, path: str):
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))

    def fail(self, where: str, problem: str):
        raise SweepError(f"{self.path}: {where}: {problem}")

    def mapping(self, value, where: str, allowed) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = [str(k) for k in value if k not in allowed]
        if unknown:
            self.fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        return value

    def items(self, data: dict, key: str) -> list:
        value = data.get(key)
        if not isinstance(value, list) or not value:
            self.fail(key, "expected a non-empty list")
        return value

    def text(self, value, where: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def count(self, value, where: str, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(where, f"expected an integer >= 1, got {value!r}")
        return value

    def file(self, value, where: str) -> str:
        """A path relative to the sweep file, which must exist."""
        path = os.path.normpath(os.path.join(self.base, os.path.expanduser(self.text(value, where))))
        if not os.path.exists(path):
            self.fail(where, f"{value}: no such file or directory")
        return path

    def unique(self, names: list, key: str) -> None:
        seen = set()
        for i, n in enumerate(names):
            if n in seen:
                self.fail(f"{key}[{i}]", f"the name {n!r} is used twice; give each entry its own name")
            seen.add(n)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _models(f: _Fields, data: dict) -> list:
    from mrq.onnx_import import load_model
    out = []
    for i, item in enumerate(f.items(data, "models")):
        where = f"models[{i}]"
        if isinstance(item, dict):
            item = f.mapping(item, where, ("name", "path"))
            path = f.file(item.get("path"), where + ".path")
            name = f.text(item.get("name", os.path.splitext(os.path.basename(path))[0]), where + ".name")
        else:
            path = f.file(item, where)
            name = os.path.splitext(os.path.basename(path))[0]
        try:
            graph = load_model(path)
        except MrqError as exc:
            f.fail(where, _first_line(exc))
        shapes = tuple(tuple(graph.tensors[n].shape or ())[1:] for n in graph.inputs)
        out.append(ModelEntry(name, path, sweep_cells.files_digest([path]), tuple(graph.inputs), shapes))
    f.unique([m.name for m in out], "models")
    return out


def _profiles(f: _Fields, data: dict) -> list:
    from mrq.pipeline import resolve_profile
    out = []
    for i, item in enumerate(f.items(data, "profiles")):
        where = f"profiles[{i}]"
        text = f.text(item, where)
        # a name is looked up on the profile search path; a path is relative to the sweep file
        source = f.file(text, where) if text.endswith((".yaml", ".yml")) or os.sep in text else text
        try:
            profile = resolve_profile(source)
        except MrqError as exc:
            f.fail(where, _first_line(exc))
        out.append(ProfileEntry(source, profile.name, sweep_cells.profile_digest(profile)))
    f.unique([p.source for p in out], "profiles")
    return out


def _methods(f: _Fields, data: dict) -> list:
    from mrq.requant import PASS_NAMES
    value = data.get("methods", ["naive", "full"])
    out = []
    if isinstance(value, list) and value:
        for i, name in enumerate(value):
            name = f.text(name, f"methods[{i}]")
            if name not in BUILTIN_METHODS:
                f.fail(f"methods[{i}]", f"unknown method {name!r}; the built-in ones are "
                       f"{', '.join(BUILTIN_METHODS)}, others are defined as name: {{options}}")
            out.append(BUILTIN_METHODS[name])
    elif isinstance(value, dict) and value:
        for name, opts in value.items():
            where = f"methods.{name}"
            base = BUILTIN_METHODS.get(str(name), Method(str(name)))
            opts = f.mapping(opts if opts is not None else {}, where, _METHOD_KEYS)
            kw = {}
            for k in SWITCHES:
                if k in opts:
                    if not isinstance(opts[k], bool):
                        f.fail(f"{where}.{k}", f"expected true or false, got {opts[k]!r}")
                    kw[k] = opts[k]
            disabled = opts.get("disable", list(base.disabled))
            if not isinstance(disabled, list) or not all(isinstance(p, str) for p in disabled):
                f.fail(f"{where}.disable", "expected a list of pass names")
            unknown = sorted(set(disabled) - set(PASS_NAMES))
            if unknown:
                f.fail(f"{where}.disable", f"unknown pass(es) {', '.join(unknown)}; passes are "
                       f"{', '.join(PASS_NAMES)}")
            out.append(Method(str(name), **{**{k: getattr(base, k) for k in SWITCHES}, **kw},
                              disabled=tuple(sorted(disabled))))
    else:
        f.fail("methods", "expected a list of method names or a mapping name: {options}")
    f.unique([m.name for m in out], "methods")
    return out


def _check_names(f: _Fields, where: str, path: str, source, model: ModelEntry):
    bound = source.bound_to(model.inputs)
    if set(bound.names) != set(model.inputs):
        f.fail(where, f"{path} holds {', '.join(map(repr, bound.names))}, but model {model.name!r} "
               f"takes {', '.join(map(repr, model.inputs))}")
    for name, want in zip(model.inputs, model.shapes):
        got = tuple(bound.shapes[name])
        if len(got) != len(want) or any(w not in (None, 0) and w != g for w, g in zip(want, got)):
            shape = ", ".join("?" if w in (None, 0) else str(w) for w in want)
            f.fail(where, f"{path}: {name!r} holds samples of shape {got}, but model {model.name!r} "
                   f"takes ({shape})")


def _datasets(f: _Fields, data: dict, models: list) -> list:
    from mrq.datasets import open_inputs, open_labels
    out = []
    for i, item in enumerate(f.items(data, "datasets")):
        where = f"datasets[{i}]"
        item = f.mapping(item, where, _DATASET_KEYS)
        inputs = f.file(item.get("inputs"), where + ".inputs")
        name = f.text(item.get("name", os.path.splitext(os.path.basename(inputs))[0]), where + ".name")
        labels = f.file(item["labels"], where + ".labels") if item.get("labels") is not None else None
        calib = f.file(item["calibration"], where + ".calibration") if item.get("calibration") is not None else None
        samples = f.count(item.get("calibration_samples"), where + ".calibration_samples",
                          DEFAULT_CALIBRATION_SAMPLES)
        files = []
        try:
            with open_inputs(inputs) as src:
                if src.num_samples == 0:
                    f.fail(where + ".inputs", f"{inputs} holds no samples")
                for m in models:
                    _check_names(f, where + ".inputs", inputs, src, m)
                num = src.num_samples
                files += src.shards
            if labels:
                open_labels(labels, num)
                files += _file_list(labels)
            if calib:
                with open_inputs(calib) as src:
                    for m in models:
                        _check_names(f, where + ".calibration", calib, src, m)
                    files += src.shards
        except MrqError as exc:
            if isinstance(exc, SweepError):
                raise
            f.fail(where, _first_line(exc))
        digest = hashlib.sha256(f"{sweep_cells.files_digest(files)}:{bool(labels)}:{bool(calib)}:{samples}".encode())
        out.append(Dataset(name, inputs, labels, calib, samples, num, digest.hexdigest()))
    f.unique([d.name for d in out], "datasets")
    return out


def load_plan(path: str) -> Plan:
    """Read and validate a sweep file; every problem is a :class:`SweepError` before any work."""
    data = _read_yaml(path)
    f = _Fields(path)
    f.mapping(data, "<document>", _TOP_KEYS)
    models = _models(f, data)
    profiles = _profiles(f, data)
    methods = _methods(f, data)
    datasets = _datasets(f, data, models)
    plan = Plan(path, models, profiles, methods, datasets,
                shard_size=f.count(data.get("shard_size"), "shard_size", DEFAULT_SHARD_SIZE),
                batch_size=f.count(data.get("batch_size"), "batch_size", DEFAULT_BATCH_SIZE))
    for m in models:
        for d in datasets:
            for p in profiles:
                for method in methods:
                    key = hashlib.sha256(json.dumps({
                        "mrq": mrq.__version__, "model": m.digest, "profile": p.digest,
                        "method": method.as_dict(), "data": d.digest, "batch_size": plan.batch_size,
                    }, sort_keys=True).encode()).hexdigest()
                    plan.cells.append(Cell(
                        key=key, model=m.name, model_path=m.path, model_hash=m.digest,
                        profile=p.source, profile_hash=p.digest, method=method, dataset=d.name,
                        inputs=d.inputs, labels=d.labels, calibration=d.calibration,
                        calibration_samples=d.calibration_samples, batch_size=plan.batch_size))
    return plan


def plan_inputs(plan: Plan) -> list:
    """Every path a sweep reads (for :func:`mrq.fileio.guard_paths`)."""
    paths = [plan.path] + [m.path for m in plan.models]
    paths += [p.source for p in plan.profiles if os.path.exists(p.source)]
    for d in plan.datasets:
        paths += [d.inputs, d.labels, d.calibration]
    return [p for p in paths if p]


# --------------------------------------------------------------------------------------------
# The resume store
# --------------------------------------------------------------------------------------------


class Store:
    """Finished work under ``OUT/state``: one JSON per (cell, shard) and per cell's
    re-quantization, written atomically and named by content hash."""

    def __init__(self, out_dir: str):
        self.dir = os.path.join(out_dir, STATE_DIR)

    def _path(self, key: str, kind: str) -> str:
        return os.path.join(self.dir, f"{key}.{kind}.json")

    def load(self, key: str, kind: str):
        try:
            with open(self._path(key, kind), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None     # unreadable: computed again and replaced

    def save(self, key: str, kind: str, data) -> None:
        from mrq.fileio import save_json
        save_json(self._path(key, kind), data)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    rows: list
    provenance: dict
    computed: int = 0        # (cell, shard) results computed by this run
    reused: int = 0          # ... found in the store

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r["status"] != "ok"]


def dask_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("distributed") is not None


@contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2, timeout: float = CONNECT_TIMEOUT_S):
    """A Dask client: of a running scheduler at ``scheduler``, else of a local cluster of
    ``workers`` single-threaded processes (the simulator runs each task on one thread)."""
    from distributed import Client, LocalCluster
    # the scheduler's and workers' own chatter (a lost worker, a retried task) is not ours
    quiet = logging.getLogger("distributed")
    old_level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise SweepError(f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s "
                                 f"({_first_line(exc)})") from None
            try:
                # tasks sent to a scheduler without workers would wait forever
                client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except TimeoutError:
                client.close()
                raise SweepError(f"the Dask scheduler at {scheduler} has had no worker for "
                                 f"{WORKER_WAIT_S} s; start some with `dask worker {scheduler}`") from None
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   # a free port: the scheduler serves HTTP even without a
                                   # dashboard, and 8787 may belong to another cluster
                                   dashboard_address=":0", silence_logs=logging.CRITICAL)
            client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        quiet.setLevel(old_level)


def _progress(total: int, enabled: bool):
    from mrq.compare import _noop_bar
    if not enabled or not total:
        return _noop_bar(total)
    from tqdm import tqdm
    return tqdm(total=total, desc="mrq sweep", unit="cell-shard", file=sys.stderr, leave=False,
                dynamic_ncols=True)


def run_sweep(plan: Plan, out_dir: str, connect, progress: bool = True, command: str = "") -> SweepResult:
    """Compute what the store under ``out_dir`` lacks on the cluster ``connect()`` (a context
    manager yielding a Dask client) reaches, store each piece as it finishes, and reduce every
    cell into its row. With nothing left to compute no cluster is started."""
    store = Store(out_dir)
    errors: dict = {}          # cell key -> one line
    todo_shards = []           # (cells, shard)
    need_requant = {}
    reused = 0
    for cell in plan.cells:
        stored = store.load(cell.key, "requant")
        if stored is None:
            need_requant[cell.key] = cell
        elif "error" in stored:
            errors[cell.key] = stored["error"]
    for (_, dname), cells in plan.groups().items():
        cells = [c for c in cells if c.key not in errors]
        dataset = next(d for d in plan.datasets if d.name == dname)
        for shard in plan.shards(dataset):
            missing = [c for c in cells if store.load(shard_key(c, shard), "shard") is None]
            reused += len(cells) - len(missing)
            if missing:
                todo_shards.append((missing, shard))
                need_requant.update((c.key, c) for c in missing)
    computed = 0
    if need_requant or todo_shards:
        with connect() as client:
            # created only once the cluster answers: an unreachable one leaves nothing behind
            os.makedirs(store.dir, exist_ok=True)
            computed = _compute(client, store, need_requant, todo_shards, errors, progress)
    provenance = _provenance(command)
    rows = [_row(plan, cell, store, errors.get(cell.key), provenance) for cell in plan.cells]
    return SweepResult(rows, provenance, computed=computed, reused=reused)


def _compute(client, store: Store, need_requant: dict, todo_shards: list, errors: dict,
             progress: bool) -> int:
    from distributed import as_completed

    from mrq import sweep_cells as work

    requant = {k: client.submit(work.requantize_cell, c, pure=False, retries=RETRIES)
               for k, c in need_requant.items()}
    pending = {}
    for key, fut in requant.items():
        pending[client.submit(work.requant_meta, fut, pure=False, retries=RETRIES)] = ("requant", key, None)
    # A shard task needs the re-quantized graphs of all its cells. Submitted with them as
    # dependencies right away, Dask would place every shard of a model on the worker that
    # holds most of those graphs (moving megabytes costs more than waiting, it reckons), and
    # one worker would do nearly all the simulation. So shard tasks wait until their graphs
    # exist and have been copied to every worker; then any worker is as good as any other.
    waiting = [(cells, shard, {c.key for c in cells}) for cells, shard in todo_shards]
    replicated: set = set()
    computed = 0
    bar = _progress(sum(len(c) for c, _ in todo_shards), progress)

    def release(done_key: str):
        ready = [w for w in waiting if done_key in w[2]]
        for entry in ready:
            entry[2].discard(done_key)
        for entry in [w for w in ready if not w[2]]:
            waiting.remove(entry)
            cells, shard, _ = entry
            live = [c for c in cells if c.key not in errors]
            if not live:
                bar.update(len(cells))
                continue
            fresh = [requant[c.key] for c in live if c.key not in replicated]
            if fresh:
                client.replicate(fresh)
                replicated.update(c.key for c in live)
            fut = client.submit(work.run_shard, live, [requant[c.key] for c in live], shard,
                                pure=False, retries=RETRIES)
            pending[fut] = ("shard", live, shard)
            bar.update(len(cells) - len(live))
            tasks.add(fut)

    tasks = as_completed(list(pending), loop=client.loop)
    try:
        for fut in tasks:
            kind, what, shard = pending.pop(fut)
            try:
                result = fut.result()
            except Exception as exc:   # noqa: BLE001  (a worker lost too often: the cells fail, the sweep goes on)
                line = f"{type(exc).__name__}: {_first_line(exc)}"
                for key in ([what] if kind == "requant" else [c.key for c in what]):
                    errors.setdefault(key, line)
                if kind == "requant":
                    release(what)
                else:
                    bar.update(len(what))
                continue
            finally:
                fut.release()
            if kind == "requant":
                if result.error is not None:
                    errors.setdefault(what, result.error)
                    if result.final:
                        store.save(what, "requant", {"error": result.error})
                else:
                    store.save(what, "requant", result.meta)
                release(what)
                continue
            for cell in what:
                stats = result[cell.key]
                if "error" in stats:
                    errors.setdefault(cell.key, stats["error"])
                else:
                    store.save(shard_key(cell, shard), "shard", {
                        "cell": cell.key, "start": shard.start, "stop": shard.stop,
                        "stats": work.to_json(stats)})
                    computed += 1
            bar.update(len(what))
    finally:
        bar.close()
        for fut in list(pending) + list(requant.values()):
            fut.release()
    return computed


def _provenance(command: str) -> dict:
    return {"mrq_version": mrq.__version__, "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


ROW_FIELDS = (
    "model", "profile", "method", "dataset", "status", "error", "n_samples", "accuracy",
    "input_model_accuracy", "agreement", "agreement_ci_low", "agreement_ci_high",
    "output_sqnr_db", "worst_layer", "worst_layer_sqnr_db", "acc_overflows", "out_saturated",
    "bias_saturations", "weight_bytes", "violations", "requant_seconds", "simulate_seconds",
    "model_sha256", "profile_sha256", "cell_key", "mrq_version", "date", "command",
)


def _row(plan: Plan, cell: Cell, store: Store, error, provenance: dict) -> dict:
    from mrq.sweep_cells import empty_stats, from_json, merge, row_metrics
    row = dict.fromkeys(ROW_FIELDS)
    row.update(model=cell.model, profile=cell.profile if os.sep not in cell.profile else
               os.path.basename(cell.profile), method=cell.method.name, dataset=cell.dataset,
               model_sha256=cell.model_hash, profile_sha256=cell.profile_hash, cell_key=cell.key,
               **provenance)
    meta = store.load(cell.key, "requant")
    total = empty_stats()
    if error is None:
        dataset = next(d for d in plan.datasets if d.name == cell.dataset)
        for shard in plan.shards(dataset):
            part = store.load(shard_key(cell, shard), "shard")
            if part is None or meta is None:
                error = "not computed (re-run the sweep to complete it)"
                break
            merge(total, from_json(part["stats"]))
    if error is not None:
        row.update(status="failed", error=error)
        return row
    row.update(status="ok", error="", **row_metrics(total, has_labels=cell.labels is not None),
               **meta)
    return row
