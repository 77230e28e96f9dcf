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

No row is dropped. Rows the plan gave to a part but that no folder holds are
listed with their part; rows composed from others (chapter 6's 6.11 and 6.12
from the ensemble's nets) come with the command that writes them.
"""
import argparse
import json
import shlex
import sys
from pathlib import Path

from experiments import store

# row keys that say when, where or how fast a row was made, not what it measured
VOLATILE = {"run", "finished", "seconds", "earlier_seconds", "untimed_epochs", "devices", "note", "trained_with"}
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
    code = run.get("code") or {}
    return (("command", " ".join(settings_argv(run.get("argv", [])))), ("quick", bool(run.get("quick"))),
            ("x64", bool(run.get("x64", False))), ("seeds", tuple(run.get("seeds") or ())),
            ("version", code.get("version")), ("commit", code.get("commit")),
            ("plan", (run.get("part") or {}).get("plan")))


def chapter_folders(folder):
    """{chapter: folder} under a part's folder."""
    folder = Path(folder)
    if (folder / store.RESULTS).is_file():
        results = store.read_results(folder)
        return {results.get("chapter") or folder.name: folder}
    found = {p.parent.name: p.parent for p in sorted(folder.glob(f"chap*/{store.RESULTS}"))}
    if not found:
        raise MergeError(f"{folder} holds no results.json (nor chapN/results.json): give the --out folder of a part")
    return found


def _canonical(row):
    return json.dumps({k: v for k, v in row.items() if k not in VOLATILE}, sort_keys=True, default=str)


def _same(a, b):
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _differing_keys(a, b):
    return sorted(k for k in (set(a) | set(b)) - VOLATILE if not _same(a.get(k), b.get(k)))


def merge_chapter(chapter, sources):
    """One chapter's results from ``sources`` [(folder, results)]: (merged
    results, report lines). Raises MergeError on other settings or conflicts."""
    used = [{run["id"]: run for run in res.get("runs", [])} for _, res in sources]
    kinds = {}
    for (folder, res), runs in zip(sources, used):
        for r in res["rows"]:
            run = runs.get(r.get("run"))
            key = run_settings(run) if run is not None else (("rows without a run", True),)
            kinds.setdefault(key, set()).add(str(folder))
    if len(kinds) > 1:
        lines = [f"{chapter}: the parts were made with other settings or code; nothing was written:"]
        for key, folders in kinds.items():
            lines.append("  " + ", ".join(f"{k} {v!r}" for k, v in key) + f": {', '.join(sorted(folders))}")
        raise MergeError("\n".join(lines))
    rows, where, conflicts = {}, {}, []
    for folder, res in sources:
        for r in res["rows"]:
            held = rows.get(r["id"])
            if held is None:
                rows[r["id"]], where[r["id"]] = r, folder
            elif _canonical(held) != _canonical(r):
                conflicts.append(f"  row {r['id']}: {where[r['id']]} and {folder} differ in "
                                 + ", ".join(_differing_keys(held, r)))
    merged = {}
    for folder, res in sources:
        for k, v in res.items():
            if k in ("rows", "runs", "wall_seconds", "complete", "environment"):
                continue
            if k not in merged:
                merged[k] = v
            elif isinstance(v, dict) and isinstance(merged[k], dict):   # per-row entries: curves, ...
                conflicts += [f"  {k}[{kk}]: differs in {folder}" for kk, vv in v.items()
                              if kk in merged[k] and not _same(merged[k][kk], vv)]
                merged[k] = {**v, **merged[k]}
            elif not _same(merged[k], v):
                conflicts.append(f"  {k}: {merged[k]!r} in an earlier folder, {v!r} in {folder}")
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
    return merged, missing_lines(chapter, merged)


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
    have = {r["id"] for r in merged["rows"]}
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
    for job, rows in composed.items():
        gone = [r for r in rows if r not in have]
        if gone:
            run = next((run for run in merged["runs"] if run.get("part")), {})
            argv = settings_argv(run.get("argv", []))
            lines.append(f"{chapter}: rows {', '.join(gone)} are composed from the nets {job}@<seed> once all are "
                         f"in one folder: python -m experiments.{chapter} {shlex.join(argv)}"
                         f"{' ' if argv else ''}--only {job} --out OUT/{chapter} --resume (trains nothing "
                         "when every net is recorded)")
    return lines


def merge(folders, out):
    """Combine the parts in ``folders`` into ``out``; the report lines. Raises
    MergeError (or store.ResultsError) before writing anything."""
    out = Path(out)
    by_chapter = {}
    for folder in folders:
        for chapter, f in chapter_folders(folder).items():
            by_chapter.setdefault(chapter, []).append(f)
    merged, lines = {}, []
    for chapter, found in sorted(by_chapter.items(), key=lambda kv: store.row_sort_key(kv[0])):
        target = out / chapter
        if (target / store.RESULTS).is_file() and all(f.resolve() != target.resolve() for f in found):
            found = [target, *found]
        sources = [(f, store.read_results(f)) for f in found]
        merged[chapter], notes = merge_chapter(chapter, sources)
        lines += [f"{chapter}: {len(merged[chapter]['rows'])} rows from {len(found)} folders"] + notes
    for chapter, results in merged.items():   # every chapter checked before anything is written
        target = out / chapter
        target.mkdir(parents=True, exist_ok=True)
        with store.locked(target):
            store.write_json(target / store.RESULTS, results)
        lines += copy_figures(chapter, by_chapter[chapter], target)
    from experiments import reproduce
    lines.append(f"wrote {reproduce.write_report(out)}")
    return lines


def copy_figures(chapter, folders, target):
    """Copy the parts' figures into ``target``; a figure drawn by more than
    one part (from its own rows) keeps the first and is named."""
    seen, twice = set(), []
    for folder in folders:
        if Path(folder).resolve() == Path(target).resolve():
            seen |= {p.name for p in Path(folder).glob("*.png")}
            continue
        for p in sorted(Path(folder).glob("*.png")):
            if p.name in seen:
                twice.append(p.name)
                continue
            seen.add(p.name)
            store.atomic_write(Path(target) / p.name, lambda f, p=p: f.write(p.read_bytes()))
    if not twice:
        return []
    return [f"{chapter}: figures drawn by more than one part from its own rows (the first kept): "
            f"{', '.join(sorted(set(twice)))}; `python -m experiments.{chapter} ... --out {target} --resume` "
            "redraws them from the merged rows"]


def main(argv=None):
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
