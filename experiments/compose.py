"""Where units meet: a row composed from its units' records.

A row trained with several seeds is made of units, ``<row>@<seed>`` (one seed
of it, ``experiments.driver.Job``), recorded in a results file's ``"units"``
(or, for chapter 6's ensemble, as rows of their own). Units of one row may be
trained in different parts (``--part``); wherever their records come together
(the end of a run, ``nndl-jax merge``, a report), the row (mean ± sd, best of
k, its per-seed lists and curves) is composed from them by its chapter's
``compose({row: [records in seed order]}, results)``. The parts' run entries
say which rows compose from which units (``parts.part_record``'s ``composed``).
"""
import importlib
import re

from experiments import store

CHAPTER_NAME = re.compile(r"chap[A-Za-z0-9_-]*")


def compose_rows(chapter, merged):
    """Compose (in ``merged``, in place) every row whose units the parts held
    apart and that no part composed: by the chapter's ``compose`` from the
    unit records in seed order. Report lines."""
    wanted = {}
    for run in merged["runs"]:
        wanted.update((run.get("part") or {}).get("composed", {}))
    have = {r["id"]: r for r in merged["rows"]}
    records = {**have, **merged.get("units", {})}
    lines = []
    for job, entry in sorted(wanted.items()):
        if all(r in have for r in entry["rows"]) or not all(u in records for u in entry["units"]):
            continue
        by_row = {}
        for uid in entry["units"]:
            by_row.setdefault(uid.split("@")[0], []).append(records[uid])
        if not CHAPTER_NAME.fullmatch(chapter):
            continue
        module = importlib.import_module(f"experiments.{chapter}")
        made, payload = module.compose({k: sorted(v, key=lambda u: u["seed"]) for k, v in by_row.items()}, merged)
        flat = [u for us in by_row.values() for u in us]
        latest = max(flat, key=lambda u: u.get("finished", ""))
        for r in made:
            r.update({k: latest[k] for k in ("quick", "x64", "run", "finished") if k in latest})
            r.setdefault("seeds", sorted({u["seed"] for u in flat}))
            r.setdefault("seconds", sum({(u.get("run"), tuple(u.get("trained_with") or [])): u.get("seconds", 0)
                                         for u in flat}.values()))
        merged["rows"] = sorted({**have, **{r["id"]: r for r in made}}.values(),
                                key=lambda r: store.row_sort_key(r["id"]))
        have = {r["id"]: r for r in merged["rows"]}
        for k, v in payload.items():
            merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
        lines.append(f"{chapter}: composed {', '.join(r['id'] for r in made)} from {len(entry['units'])} unit "
                     f"records of {job} trained in several parts")
    return lines


