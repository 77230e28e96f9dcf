"""Parts made on several machines combined into one result.

    nndl-jax merge DIR [DIR ...] --out DIR

Each DIR is a part's output: a ``nndl-jax reproduce --part I/N`` folder
(``chapN/results.json`` inside) or a chapter's ``--out`` folder
(``results.json``). ``--out`` gets one ``chapN/results.json`` per chapter
(an existing one there counts as one more part, so a late part can be added)
and one REPORT.md. Refused, writing nothing, with what differs:

- parts made with other settings (the recorded command lines, less
  ``--part``, ``--out``, ``--only``, ``--nets``, ``--resume``, ``--restart``,
  ``--devices`` and ``--data-dir``, which do not change a row's numbers) or by
  other code (package version and git commit, recorded by every run), or
  planned differently (the plan's fingerprint);
- a row in two parts with other values (a conflict; times, notes and run
  stamps aside); a chapter payload entry likewise.

- a part whose ``"chapter"`` is not a chapter name (a path would write
  outside ``--out``), or made with another jax or jaxlib version.

No row is dropped. The units of a row trained in several parts (``<row>@<seed>``)
meet here: the row (mean ± sd, best of k, its per-seed lists and curves) is
composed from them by its chapter's ``compose``, and so are chapter 6's 6.11
and 6.12 from the ensemble's nets. Rows the plan gave to a part but that no
folder holds are listed with their part. Each chapter's figures drawn from
rows are drawn again from the merged rows (``redraw``); the others are copied.
"""
import argparse
import importlib
import json
import os
import shlex
import sys
from pathlib import Path

from experiments import compose, context, store

VOLATILE = store.VOLATILE   # one list of what does not identify a measurement
# payload entries that say how long something took, not what it measured
VOLATILE_PAYLOAD = {"timings_seconds"}
# options that choose which rows run, or where, not what a row's numbers are
SELECTION = {"--part": 1, "--out": 1, "--resume": 0, "--restart": 0, "--devices": 1, "--data-dir": 1,
             "--only": None, "--nets": None}


class MergeError(ValueError):
    """Parts that cannot be combined: the message says what differs, where."""


def settings_argv(argv):
    """A run's command line less the options that only select rows or places."""
    out, i = [], 0
    while i < len(argv):
        a, i = argv[i], i + 1
        name = a.split("=")[0]
        if name not in SELECTION:
            out.append(a)
        elif "=" not in a and SELECTION[name] is None:   # a list of values
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
        elif "=" not in a:
            i += SELECTION[name]
    return out


def run_settings(run):
    """What a part's run must share with the other parts' runs."""
    code, env = run.get("code") or {}, run.get("environment") or {}
    return (("command", " ".join(settings_argv(run.get("argv", [])))), ("quick", bool(run.get("quick"))),
            ("x64", bool(run.get("x64", False))), ("seeds", tuple(run.get("seeds") or ())),
            ("version", code.get("version")), ("commit", code.get("commit")),
            ("jax", env.get("jax")), ("jaxlib", env.get("jaxlib")),
            ("plan", (run.get("part") or {}).get("plan")))


CHAPTER_NAME = compose.CHAPTER_NAME


def chapter_name(name, path):
    """``name`` when it is a chapter's name (``chap6``, ``chap3-book-replay``), never a path: else MergeError."""
    if not isinstance(name, str) or not CHAPTER_NAME.fullmatch(name):
        raise MergeError(f"{path}: its \"chapter\" is {name!r}, not a chapter name (chap1 ... chap6): "
                         "a part's results are data, and a path there would write outside --out; "
                         "nothing was written")
    return name


def chapter_folders(folder):
    """{chapter: folder} under a part's folder."""
    folder = Path(folder)
    results = store.read_results(folder)   # a folder, FIFO or damaged file there: ResultsError
    if results is not None:
        return {chapter_name(results.get("chapter") or folder.name, folder / store.RESULTS): folder}
    found = {chapter_name(p.parent.name, p): p.parent for p in sorted(folder.glob(f"chap*/{store.RESULTS}"))}
    if not found:
        raise MergeError(f"{folder} holds no results.json (nor chapN/results.json): give the --out folder of a part")
    return found


def _same(a, b):
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def settings_refusal(chapter, sources):
    """MergeError text when the parts' runs (every run entry, not only those
    rows refer to) were made with other settings or code; else None."""
    kinds = {}
    for folder, res in sources:
        for run in res.get("runs", []) or [None]:
            key = run_settings(run) if run is not None else (("no run entry", True),)
            kinds.setdefault(key, set()).add(str(folder))
    if len(kinds) <= 1:
        return None
    lines = [f"{chapter}: the parts were made with other settings or code; nothing was written:"]
    for key, folders in kinds.items():
        lines.append("  " + ", ".join(f"{k} {v!r}" for k, v in key) + f": {', '.join(sorted(folders))}")
    return "\n".join(lines)


def merged_payload(sources, conflicts):
    """The chapter payload entries of every part (curves, settings, ...), dicts key by key; conflicts appended."""
    merged = {}
    for folder, res in sources:
        for k, v in res.items():
            if k in ("rows", "runs", "units", "wall_seconds", "complete", "environment"):
                continue
            if k not in merged:
                merged[k] = v
            elif isinstance(v, dict) and isinstance(merged[k], dict):   # per-row entries: curves, ...
                if k not in VOLATILE_PAYLOAD:
                    conflicts += [f"  {k}[{kk}]: differs in {folder}" for kk, vv in v.items()
                                  if kk in merged[k] and not _same(merged[k][kk], vv)]
                merged[k] = {**v, **merged[k]}
            elif not _same(merged[k], v) and k not in VOLATILE_PAYLOAD:
                conflicts.append(f"  {k}: {merged[k]!r} in an earlier folder, {v!r} in {folder}")
    return merged


def merge_chapter(chapter, sources):
    """One chapter's results from ``sources`` [(folder, results)]: (merged
    results, report lines). Raises MergeError on other settings or conflicts.
    Rows and units are merged by ``store.merge_records`` refusing conflicts
    (where a run into one folder replaces them)."""
    refusal = settings_refusal(chapter, sources)
    if refusal:
        raise MergeError(refusal)
    rows, units, conflicts = {}, {}, []
    for folder, res in sources:
        rows, clash = store.merge_records(rows, res["rows"], refuse=True)
        units, clash_units = store.merge_records(units, list(res.get("units", {}).values()), refuse=True)
        conflicts += [f"  {'row' if k < len(clash) else 'unit'} {rid}: differs in {folder} in {', '.join(keys)}"
                      for k, (rid, keys) in enumerate(clash + clash_units)]
    merged = merged_payload(sources, conflicts)
    if conflicts:
        raise MergeError("\n".join([f"{chapter}: rows or entries with other values in two parts (a conflict, "
                                    "not resolved here); nothing was written:"] + conflicts))
    runs = {}
    for res in (res for _, res in sources):
        runs.update({run["id"]: run for run in res.get("runs", [])})
    merged.update(rows=sorted(rows.values(), key=lambda r: store.row_sort_key(r["id"])),
                  runs=sorted(runs.values(), key=lambda run: run["id"]),
                  wall_seconds=max(res.get("wall_seconds", 0.0) for _, res in sources),
                  complete=all(res.get("complete", False) for _, res in sources),
                  environment=sources[0][1].get("environment"))
    if units:
        merged["units"] = dict(sorted(units.items(), key=lambda kv: store.row_sort_key(kv[0])))
    composed = compose.compose_rows(chapter, merged)
    return merged, composed + missing_lines(chapter, merged)


def missing_lines(chapter, merged):
    """What the plan gave to a part that the merged rows lack, and how to
    compose rows made from others."""
    planned, composed, given, n = {}, {}, set(), None
    for run in merged["runs"]:
        part = run.get("part")
        if not part:
            continue
        planned.update(part.get("planned", {}))
        composed.update(part.get("composed", {}))
        given.add(part["part"])
        n = part["part"].split("/")[1]
    have = {r["id"] for r in merged["rows"]} | set(merged.get("units", {}))
    lines = []
    missing = {}
    for unit in planned.values():
        gone = [r for r in unit["rows"] if r not in have]
        if gone:
            missing.setdefault(unit["part"], []).extend(gone)
    for k in sorted(missing):
        state = "given, but it has not recorded them (unfinished? resume it)" \
            if f"{k}/{n}" in given else "not among the folders given"
        lines.append(f"{chapter}: rows missing from part {k}/{n} ({state}): {', '.join(missing[k])}")
    for job, entry in composed.items():
        gone = [r for r in entry["rows"] if r not in have]
        if gone:
            lines.append(f"{chapter}: rows {', '.join(gone)} are composed from the units of {job} once every part "
                         "that holds some is merged here (merge the missing parts into the same --out)")
    return lines


def out_refusal(out):
    """Why ``out`` cannot take the merged results, as one line naming the file, or None."""
    out = Path(out)
    blocking = next((f for f in [out, *out.parents] if f.exists()), None)
    if blocking is not None and not blocking.is_dir():
        return f"--out {out}: {blocking} is a file, not a folder; give a folder"
    try:
        with store.probed_folder(out):
            pass
    except OSError as e:
        return f"--out {out} cannot be written ({e.strerror or e}, {e.filename or out}); give a folder you can write to"
    return None


def merge(folders, out):
    """Combine the parts in ``folders`` into ``out``; the report lines. Raises
    MergeError (or store.ResultsError) before writing anything; a write that
    fails half-way raises MergeError saying what was and was not written."""
    out = Path(out)
    refusal = out_refusal(out)
    if refusal:
        raise MergeError(refusal)
    by_chapter = {}
    for folder in folders:
        for chapter, f in chapter_folders(folder).items():
            by_chapter.setdefault(chapter, []).append(f)
    merged, lines = {}, []
    for chapter, found in sorted(by_chapter.items(), key=lambda kv: store.row_sort_key(kv[0])):
        target = out / chapter
        if os.path.lexists(target / store.RESULTS) and all(f.resolve() != target.resolve() for f in found):
            found = [target, *found]   # read (and refused, when it cannot be used) as one more part
        sources = [(f, store.read_results(f)) for f in found]
        merged[chapter], notes = merge_chapter(chapter, sources)
        lines += [f"{chapter}: {len(merged[chapter]['rows'])} rows from {len(found)} folders"] + notes
    written = []
    try:
        for chapter, results in merged.items():   # every chapter checked before anything is written
            target = out / chapter
            target.mkdir(parents=True, exist_ok=True)
            with store.locked(target):
                store.write_json(target / store.RESULTS, results)
            written.append(chapter)
            lines += figures(chapter, by_chapter[chapter], target, results)
        from experiments import reproduce
        lines.append(f"wrote {reproduce.write_report(out)}")
    except OSError as e:
        left = [c for c in merged if c not in written]
        raise MergeError(f"merge stopped half-way: cannot write {e.filename or out} ({e.strerror or e}); "
                         f"written: {', '.join(written) or 'nothing'}; not written: {', '.join(left) or 'REPORT.md'}. "
                         "Fix it and run the same merge again (it starts over from the parts)") from None
    return lines


def figures(chapter, folders, target, results):
    """The chapter's figures in ``target``: those its ``redraw(out, results)``
    draws from rows drawn again from the merged rows; the parts' others copied
    (a figure drawn by more than one part from its own rows keeps the first, named)."""
    module = importlib.import_module(f"experiments.{chapter}") if chapter in _chapter_modules() else None
    into = context.RunContext(chapter=chapter, out=Path(target))   # what a chapter's figures read of a run
    redrawn = set(module.redraw(into, results) or ()) if hasattr(module, "redraw") else set()
    seen, twice = set(redrawn), []
    for folder in folders:
        if Path(folder).resolve() == Path(target).resolve():
            seen |= {p.name for p in Path(folder).glob("*.png")}
            continue
        for p in sorted(Path(folder).glob("*.png")):
            if p.name in seen:
                if p.name not in redrawn:
                    twice.append(p.name)
                continue
            seen.add(p.name)
            store.atomic_write(Path(target) / p.name, lambda f, p=p: f.write(p.read_bytes()))
    lines = [f"{chapter}: redrew {', '.join(sorted(redrawn))} from the merged rows"] if redrawn else []
    if twice:
        run = next((run for run in results["runs"]), {})
        command = shlex.join(settings_argv(run.get("argv", [])) + ["--out", str(target), "--resume"])
        lines.append(f"{chapter}: figures drawn by more than one part from its own rows (the first kept): "
                     f"{', '.join(sorted(set(twice)))}; this redraws them from the merged rows, training "
                     f"nothing: python -m experiments.{chapter} {command}")
    return lines


def _chapter_modules():
    return {p.stem for p in Path(__file__).parent.glob("chap*.py")}


def main(argv=None, run_session=None):
    """``nndl-jax merge``; ``run_session`` (``session.main_entry``'s) is not used: a merge trains nothing."""
    p = argparse.ArgumentParser(prog="nndl-jax merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="+", type=Path, metavar="DIR", help="the parts' --out folders")
    p.add_argument("--out", type=Path, required=True, help="the folder of the merged results and REPORT.md")
    args = p.parse_args(argv)
    for folder in args.parts:
        if not folder.is_dir():
            p.error(f"{folder} is not a folder")
    try:
        lines = merge(args.parts, args.out)
    except (MergeError, store.ResultsError) as e:
        print(f"nndl-jax merge: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
