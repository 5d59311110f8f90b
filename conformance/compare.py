"""Records against the float64 reference and against each other: the checks of the matrix.

Every numeric check is conformance.tolerances.judge with the bound of conformance.tolerances.bound: the same
function the backend tests call in-process (tests/test_backends.py). A bad record never raises here:
it becomes a failed 'record' row that names the file and the problem, and a comparison that ends up
checking nothing fails and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import calc, provenance, weights
from conformance import errormodel, replay
from conformance.cases import Cases, as_kernels_see, reference_results, replays_dropout, resumed_view
from conformance.records import Record, RecordError, read_record
from conformance.tolerances import CHECKS, FACTOR, bound, judge, judge_dropout

from .labels import copy_of, labels, versions_of


@dataclass
class Check:
    variant: str
    check: str  # shapes, params, one of conformance.tolerances.CHECKS, or record (the file itself)
    against: str  # "reference", "spec", another record's label, or "-"
    backend: str  # this record's label
    measured: float | None  # max |a - b| (elementwise checks) or ||a - b|| / ||b|| (norm checks)
    bound: str  # what the bound is made of
    ratio: float  # measured error in units of the bound: <= 1 passes
    passed: bool
    detail: str = ""
    path: str = ""


@dataclass
class Comparison:
    rows: list[Check] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)  # what was compared with what, one line each
    provenance: dict = field(default_factory=dict)  # when, at which commit, by which command, on which CPU

    @property
    def numeric_checks(self) -> int:
        return sum(r.check in CHECKS for r in self.rows)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)


def _keys(check: str, reference: dict) -> list[str]:
    prefix = CHECKS[check]
    return [k for k in reference if (k.startswith(prefix) if prefix.endswith("/") else k == prefix)]


def as_updates(values: dict[str, np.ndarray], init: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Final weights as the update training made (final - init): the init would otherwise dominate the
    norm and hide a wrong step (biases start at zero)."""
    out = {}
    for k, v in values.items():
        name = k.split("final/", 1)[1] if "final/" in k else None
        out[k] = v - init[name] if name in init and np.shape(v) == init[name].shape else v
    return out


def bounds_for(reference: dict, spreads: dict, precision: str) -> dict[str, np.ndarray]:
    """Every quantity's bound for a `precision` implementation (reference as updates, see as_updates)."""
    return {k: bound(errormodel.kind_of(k), reference[k], spreads[k], precision) for k in reference
            if errormodel.kind_of(k) != "dropout"}


def for_convention(reference: dict, running_variance: str) -> dict:
    """The reference as a backend that keeps the `running_variance` ("biased" or "unbiased") sees it."""
    out = {k: v for k, v in reference.items() if not k.endswith("_unbiased")}
    if running_variance == "unbiased":
        out.update({k[: -len("_unbiased")]: v for k, v in reference.items() if k.endswith("_unbiased")})
    return out


def _dropout_row(variant: str, label: str, against: str, *, values: dict, reference: dict,
                 precision: str, extra: list) -> Check | None:
    rates = sorted((k, float(v[0])) for k, v in reference.items() if k.startswith("dropout/") and k.endswith("/rate"))
    if not rates:
        return None
    verdicts = list(extra)
    for key, rate in rates:
        base = key[: -len("rate")]
        if base + "train" not in values or base + "eval" not in values:
            verdicts.append((float("inf"), None, f"{base}train / eval: missing"))
            continue
        v = judge_dropout(rate, values[base + "train"], values[base + "eval"], precision)
        verdicts.append((v.ratio, v.measured, v.detail))
    ratio, measured, detail = max(verdicts, key=lambda t: t[0])
    return Check(variant, "dropout", against, label, measured, "5 binomial sigmas; kept units 1/(1-p)", ratio,
                 bool(ratio <= 1.0), detail)


def check_values(variant: str, label: str, against: str, *, values: dict, reference: dict, bounds: dict,
                 precision: str | None = None, dropout: list = ()) -> list[Check]:
    """One row per check: the worst tensor of its group decides, and is named. precision: the
    record's, for the statistical dropout check (None between two records: their masks differ);
    dropout: more (ratio, measured, detail) verdicts of that check (replay.epoch_independence)."""
    rows = []
    for check in CHECKS:
        if check == "dropout":
            row = _dropout_row(variant, label, against, values=values, reference=reference,
                               precision=precision, extra=dropout) if precision else None
            rows += [row] if row else []
            continue
        verdicts = []
        for key in _keys(check, reference):
            if key not in values:
                verdicts.append((float("inf"), float("inf"), f"{key}: missing"))
                continue
            v = judge(errormodel.kind_of(key), values[key], reference[key], bounds[key])
            name = key.rsplit("/", 1)[1] if check.endswith(("gradients", "weights", "statistics")) else ""
            verdicts.append((v.ratio, v.measured, " ".join(filter(None, [name, v.detail]))))
        if not verdicts:
            continue
        ratio, measured, detail = max(verdicts, key=lambda t: t[0])
        what = "max" if errormodel.measure(errormodel.kind_of(_keys(check, reference)[0])) == "max" else "norm"
        rows.append(Check(variant, check, against, label, None if not np.isfinite(measured) else measured,
                          f"{what}: {FACTOR:g} x spread + floor", ratio, bool(ratio <= 1.0),
                          f"worst: {detail}" if len(verdicts) > 1 and detail else detail))
    return rows


def check_structure(rec: Record, variant: str, label: str) -> list[Check]:
    spec = rec.specs[variant]
    info = rec.meta["variants"][variant]
    want = [list(s) for s in calc.layer_output_shapes(spec)]
    got = info["layer_shapes"]
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if list(a) != b]
    ok = len(got) == len(want) and not bad
    detail = "" if ok else (f"layer {bad[0]}: {got[bad[0]]} vs spec {want[bad[0]]}" if bad
                            else f"{len(got)} layers vs spec {len(want)}")
    rows = [Check(variant, "shapes", "spec", label, None, "exact", 0.0 if ok else float("inf"), ok, detail,
                  str(rec.path))]
    want_n, got_n = calc.param_count(spec), info["param_count"]
    rows.append(Check(variant, "params", "spec", label, None, "exact", 0.0 if got_n == want_n else float("inf"),
                      got_n == want_n, "" if got_n == want_n else f"{got_n} vs spec {want_n}", str(rec.path)))
    return rows


def bound_precision(rec: Record, spec) -> tuple[str, str]:
    """The precision whose bounds hold a record, and why when it is not the record's own: an fp64
    record whose backend declares that an operation of this spec computes below float64
    (float64_limits: Keras on JAX and PyTorch, whose type promotion maps float64 to float32) is held to fp32 bounds,
    and every one of its rows says so."""
    limits = rec.meta.get("float64_limits", {})
    uses_bn = any(block.batch_norm for _, block in spec.blocks())
    if rec.precision == "fp64" and "all" in limits:
        return "fp32", f"fp32 bound: {limits['all']}"
    if rec.precision == "fp64" and "batch_norm" in limits and uses_bn:
        return "fp32", f"fp32 bound: {limits['batch_norm']}"
    return rec.precision, ""


def _held(rec: Record, spec) -> tuple[str, str]:
    """bound_precision, and for a resume record the looser of its own and its checkpoint's backend's:
    an fp64 checkpoint from a backend that computes below float64 carries float32 errors."""
    own = bound_precision(rec, spec)
    source = rec.meta.get("resumed_from")
    if not source:
        return own
    theirs = bound_precision(Record(rec.path, {"precision": rec.precision,
                                               "float64_limits": source.get("float64_limits", {})},
                                    {}, rec.cases, {}), spec)
    if theirs[0] != own[0] and own[0] == rec.precision:
        return theirs[0], f"{theirs[1]} (the checkpoint's backend, {source['backend']})"
    return own


def with_replay(spec, cases: Cases, init: dict, values: dict, *, reference: dict, bounds: dict, hyperparameters: str,
                running_variance: str, precision: str, prefix: str = "scheduled", data_dir=None
                ) -> tuple[dict, dict, list]:
    """(reference, bounds, dropout verdicts) of a record's `values`: where the scheduled case replays dropout, its
    keys ("<prefix>/...") those of the record's own masks (replay.replayed) and their independence across epochs
    judged; elsewhere as given. The matrix and the planted bugs (tests/mutations.py) both call this."""
    if not replays_dropout(spec):
        return reference, bounds, []
    verdicts = replay.epoch_independence(values, spec, cases, prefix)
    try:
        seen, spreads = replay.replayed(spec, cases, values, hyperparameters=hyperparameters, precision=precision,
                                        prefix=prefix, data_dir=data_dir)
    except KeyError:  # no masks: the dropout row says so, and the run fails against the dropout-off reference
        return reference, bounds, verdicts
    seen = for_convention(as_updates(seen, init), running_variance)
    own = bounds_for(seen, for_convention(spreads, running_variance), precision)
    return {**reference, **seen}, {**bounds, **own}, verdicts


def reference_as_seen(spec, cases: Cases, init: dict, *, hyperparameters: str, running_variance: str,
                      data_dir=None, use_cache: bool = True) -> dict:
    """The float64 reference (as updates from `init`) as a backend's kernels see it: with its
    hyperparameters (exact, or float32 for MXNet) and its running variance's convention. The matrix
    and tests/test_backends.py both call this."""
    spec, cases = as_kernels_see(spec, cases, hyperparameters)
    return for_convention(as_updates(reference_results(spec, cases, data_dir, use_cache), init), running_variance)


class _References:
    """The reference of one variant as each record's kernels see it, computed once per kind of record."""

    def __init__(self, spec, cases: Cases, init: dict, *, data_dir, use_cache: bool):
        self.spec, self.cases, self.init, self.data_dir, self.use_cache = spec, cases, init, data_dir, use_cache
        self.seen: dict[tuple, dict] = {}

    def seen_by(self, rec: Record) -> dict:
        return self.seen_as(*_kind(rec))

    def seen_as(self, hyperparameters: str, running_variance: str) -> dict:
        key = (hyperparameters, running_variance)
        if key not in self.seen:
            self.seen[key] = reference_as_seen(self.spec, self.cases, self.init, hyperparameters=key[0],
                                               running_variance=key[1], data_dir=self.data_dir,
                                               use_cache=self.use_cache)
        return self.seen[key]


def _resumed_rows(rec: Record, variant: str, label: str, *, refs: _References, values: dict,
                  bounds: dict, precision: str) -> list[Check]:
    """A resume record against the reference's scheduled run after its midpoint (with dropout on, replaying the
    masks of both halves, which the resume record holds). Its first half was another backend's: where that
    backend's kernels see other hyperparameters (MXNet's float32 batch-norm momentum), the distance between the
    two references is added to the bound, as between two records."""
    source = rec.meta["resumed_from"]
    own = resumed_view(for_convention(bounds, rec.meta["running_variance"]), rec.cases)
    (mine, own, dropout), (theirs, _, _) = [
        with_replay(refs.spec, rec.cases, refs.init, values, reference=resumed_view(refs.seen_as(hp, rv), rec.cases),
                    bounds=own, hyperparameters=hp, running_variance=rv, precision=precision, prefix="resumed",
                    data_dir=refs.data_dir)
        for hp, rv in (_kind(rec), (source["hyperparameters"], source["running_variance"]))]
    apart = {k: (np.abs(mine[k] - theirs[k]).reshape(-1) if errormodel.measure(errormodel.kind_of(k)) == "max"
                 else np.linalg.norm(mine[k] - theirs[k])) for k in mine if k in theirs}
    rows = check_values(variant, label, "reference", values=values, reference=mine,
                        bounds={k: own[k] + apart.get(k, 0.0) for k in mine}, dropout=dropout)
    for row in rows:
        row.path = str(rec.path)
        row.detail = "; ".join(filter(None, [row.detail, f"continued from {source['backend']}'s checkpoint"]))
    return rows


def _data_parallel_rows(rec: Record, variant: str, label: str, *, reference: dict, values: dict, bounds: dict,
                        why: str) -> list[Check]:
    """A data-parallel record against the single-device reference on the same global batch, with the same
    bounds: the constant-rate runs are all it holds. Per-replica batch statistics compute something else;
    its rows fail, and say so (docs/distributed.md measures by how much)."""
    dp = rec.meta["data_parallel"]
    held = {k: v for k, v in reference.items() if k in values}
    rows = check_values(variant, label, "reference", values=values, reference=held,
                        bounds=for_convention(bounds, rec.meta["running_variance"]))
    uses_bn = any(block.batch_norm for _, block in rec.specs[variant].blocks())
    note = f"{dp['devices']} replicas, {dp['batch_norm']} batch norm" + (
        ": each replica's statistics, not the global batch's" if uses_bn and dp["batch_norm"] == "per replica"
        else "")
    for row in rows:
        row.path = str(rec.path)
        row.detail = "; ".join(filter(None, [row.detail, note, why]))
    return rows


def _kind(rec: Record) -> tuple[str, str]:
    """What decides how a record's kernels see the reference (see reference_as_seen)."""
    return rec.meta["hyperparameters"], rec.meta["running_variance"]


def _variant_values(rec: Record, variant: str, init: dict) -> dict[str, np.ndarray]:
    """One variant's tensors of a record, keys without the variant, final weights as updates, in float64."""
    prefix = variant + "/"
    own = {k[len(prefix):]: v for k, v in rec.tensors.items() if k.startswith(prefix)}
    return {k: np.asarray(v, dtype=np.float64) for k, v in as_updates(own, init).items()}


def _failed(label: str, detail: str, path="", variant="-") -> Check:
    return Check(variant, "record", "-", label, None, "readable", float("inf"), False, detail, str(path))


def compare(paths: list, data_dir=None, use_cache: bool = True, progress=None) -> Comparison:
    """Every record against the reference and against every other record that holds the same variant."""
    out = Comparison()
    recs: list[Record] = []
    seen: dict[Path, str] = {}
    file_names = [Path(p).name for p in paths]
    for p in paths:
        resolved = Path(p).resolve()
        label = Path(p).name if file_names.count(Path(p).name) == 1 else str(p)  # FAIL rows apart in the matrix
        if resolved in seen:
            out.rows.append(_failed(label, f"{p} is given twice: a record compared with itself checks nothing", p))
            continue
        try:
            rec = read_record(p)
        except RecordError as e:
            out.rows.append(_failed(label, str(e), p))
            continue
        copy = copy_of(resolved, [r.path.resolve() for r in recs])
        seen[resolved] = str(p)
        if copy is not None:
            out.rows.append(_failed(label, f"{p} has the same bytes as {seen[copy]}: a copy compared with itself "
                                    "checks nothing", p))
            continue
        recs.append(rec)
    names = labels(recs)
    out.provenance = provenance.collect(versions=versions_of(recs, names))
    for i, r in enumerate(recs):
        out.compared.append(f"{names[i]}: {r.path} ({r.meta['precision']}, {r.meta['device']} "
                            f"{r.meta.get('device_name', '')}, {r.meta['compile']}; "
                            f"{', '.join(f'{k} {v}' for k, v in r.meta['versions'].items() if k != 'numpy')}); "
                            f"variants {', '.join(r.specs)}")
    if len({r.cases for r in recs}) > 1:
        out.rows.append(_failed(",".join(names.values()), "records were made with different cases (seeds or sizes): "
                                "not comparable"))
        return out
    variants = list(dict.fromkeys(v for r in recs for v in r.specs))
    for variant in variants:
        holders = [i for i, r in enumerate(recs) if variant in r.specs]
        spec = recs[holders[0]].specs[variant]
        cases: Cases = recs[holders[0]].cases
        if progress:
            progress(f"reference: {variant}")
        init = weights.init(spec, cases.init_seed)
        refs = _References(spec, cases, init, data_dir=data_dir, use_cache=use_cache)
        reference_for = refs.seen_by
        ref_updates = as_updates(reference_results(spec, cases, data_dir, use_cache), init)
        held = {i: _held(recs[i], spec) for i in holders}
        bounds = {}
        for prec in {p for p, _ in held.values()}:
            spread = errormodel.spreads(spec, cases, prec, data_dir, progress=progress)
            bounds[prec] = bounds_for(ref_updates, spread, prec)
        same_net, values = [], {}
        for i in holders:
            rec = recs[i]
            if rec.specs[variant] != spec:
                out.rows.append(_failed(names[i], f"{rec.path.name} built a different network under the name "
                                        f"{variant!r} than {recs[holders[0]].path.name}", rec.path, variant))
                continue
            out.rows += check_structure(rec, variant, names[i])
            values[i] = _variant_values(rec, variant, init)  # once per record: every pair below reads it
            prec, why = held[i]
            if rec.meta.get("resumed_from"):  # the cross-framework resume case: against the reference only
                out.rows += _resumed_rows(rec, variant, names[i], refs=refs, values=values[i], bounds=bounds[prec],
                                          precision=prec)
                continue
            if rec.meta.get("data_parallel"):  # the data-parallel case: against the reference only
                out.rows += _data_parallel_rows(rec, variant, names[i], reference=reference_for(rec),
                                                values=values[i], bounds=bounds[prec], why=why)
                continue
            same_net.append(i)
            hyperparameters, convention = _kind(rec)
            reference, own, dropout = with_replay(spec, cases, init, values[i], reference=reference_for(rec),
                                                  bounds=for_convention(bounds[prec], convention), precision=prec,
                                                  hyperparameters=hyperparameters, running_variance=convention,
                                                  data_dir=data_dir)
            rows = check_values(variant, names[i], "reference", values=values[i], reference=reference, bounds=own,
                                precision=rec.precision, dropout=dropout)
            for row in rows:
                row.path = str(rec.path)
                row.detail = "; ".join(filter(None, [row.detail, why]))
            out.rows += rows
        apart: dict[tuple, dict] = {}  # how far two kinds of record's references are apart, per key
        for a_pos, a in enumerate(same_net):
            for b in same_net[a_pos + 1:]:
                va, vb = values[a], values[b]
                same = recs[a].meta["running_variance"] == recs[b].meta["running_variance"]
                keys = [k for k in vb if errormodel.kind_of(k) != "dropout" and k in bounds[held[a][0]]
                        and (same or not k.endswith(".running_var"))  # other conventions: reference only
                        and not (replays_dropout(spec) and k.startswith("scheduled/"))]  # other masks: the same
                # each record within its bound of its own reference; the references differ where the
                # kernels see other hyperparameters (MXNet's float32 batch-norm momentum): that difference is added
                kinds = tuple(sorted((_kind(recs[a]), _kind(recs[b]))))
                if kinds not in apart:
                    ra, rb = reference_for(recs[a]), reference_for(recs[b])
                    apart[kinds] = {k: (np.abs(ra[k] - rb[k]).reshape(-1)
                                        if errormodel.measure(errormodel.kind_of(k)) == "max"
                                        else np.linalg.norm(ra[k] - rb[k])) for k in ra if k in rb}
                pair = {k: bounds[held[a][0]][k] + bounds[held[b][0]][k] + apart[kinds][k] for k in keys}
                rows = check_values(variant, names[a], names[b], values=va, reference={k: vb[k] for k in keys},
                                    bounds=pair)
                identical = all(np.array_equal(va[k], vb[k]) for k in keys)
                for row in rows:
                    row.path = str(recs[a].path)
                    row.bound = "sum of both bounds"
                    if identical:
                        row.detail = "identical values"
                    elif row.check == "running_statistics" and not same:
                        row.detail = "running means only: the running variances' conventions differ"
                out.rows += rows
    if len(recs) > 1 and not any(r.against not in ("reference", "spec", "-") for r in out.rows):
        out.compared.append("no variant is held by two of these records: each was compared with the reference "
                            "only, none with another")
    if recs and out.numeric_checks == 0:
        out.rows.append(_failed("-", "0 checks ran: no record held a variant that could be compared"))
    if not paths:
        out.rows.append(_failed("-", "no record was given"))
    return out
