"""The book's numbers in context, for the report tables (NumPy-free, JAX-free).

- ``BOOK_CODE_SEEDS``: what the book's own network2.py gives over many seeds,
  for rows whose book number came from an unseeded run (3.7's printed 96.49 %
  is the seeded run; 3.8's 97.92 % is above every one of 24 seeds), so a reader
  sees where the book's number and ours fall among the book code's own runs.
- ``report_rows``: the chapter-3 rows as REPORT.md and the README show them,
  with that spread in the book cell and, where the row was replayed with the
  book's random streams (``python -m experiments.chap3 --book-seed 12345678``,
  ``experiments/book_replay.py``), the replay's epoch-by-epoch match in the note.
"""

# What the book's own code gives over many seeds (measured by running the book's
# network2.py, ported to Python 3 changing only print/xrange/zip, float64, the
# book's streams, pixels /256; ../shared/BOOK-RESULTS.md, "The book's own code,
# many seeds"): for rows whose book number came from an unseeded run, so a
# reader sees where the printed number falls among the book code's own seeds.
BOOK_CODE_SEEDS = {
    "3.7": dict(set="test", peak_mean=96.20, peak_sd=0.19, peak_min=95.85, peak_max=96.49, runs=16,
                final_mean=95.77, final_sd=0.32, reaching=1),
    "3.8": dict(set="validation", peak_mean=97.75, peak_sd=0.07, peak_min=97.59, peak_max=97.85, runs=24,
                final_mean=97.47, final_sd=0.23, reaching=0),
}


def book_code_spread_text(row_id):
    """"the book's own code: 97.75 ± 0.07 [97.59, 97.85] over 24 seeds (0 of them
    reach the book's number)": peak accuracy, mean ± sd [min, max]; "" for rows not measured so."""
    s = BOOK_CODE_SEEDS.get(row_id)
    if s is None:
        return ""
    return (f"the book's own code: {s['peak_mean']:.2f} ± {s['peak_sd']:.2f} [{s['peak_min']:.2f}, "
            f"{s['peak_max']:.2f}] over {s['runs']} seeds ({s['reaching']} of them reach"
            f"{'es' if s['reaching'] == 1 else ''} the book's number)")


REPLAY_FOLDER = "chap3-book-replay"
"""Where ``reproduced/`` keeps the replayed rows (``--book-seed 12345678 --out reproduced/chap3-book-replay``)."""


def replay_summary(row):
    """"book-seed replay (3.7@book, seed 12345678): test accuracy 29/30 epochs
    equal to the book's, ..." for a replayed row; "" for a row without a match."""
    replay = row.get("replay") or {}
    if "evaluation_accuracy" in replay:  # fig/overfitting.py: the curve the book quotes
        m = replay["evaluation_accuracy"]
        text = (f"test accuracy {m['equal']}/{m['epochs']} epochs equal to the book's, peak "
                f"{row['test_peak']:.2f} %, final {row['test_final']:.2f} %")
    elif "default" in replay:
        text = "; ".join(f"{k} init {m['equal']}/{m['epochs']} epochs equal" for k, m in replay.items())
    elif "equal" in replay and "sizes" in replay:
        text = f"{replay['equal']}/{replay['sizes']} sizes equal"
    elif "equal" in replay:
        text = f"training cost {replay['equal']}/{replay['epochs']} epochs equal"
    else:
        return ""
    return f"book-seed replay ({row['id']}, seed {row.get('book_seed')}): {text}"


def report_rows(name, rows, results):
    """The rows of chapter folder ``name`` as the report shows them: for
    chap3, a row whose book number came from an unseeded run gets the book
    code's own seed spread in its book cell (``BOOK_CODE_SEEDS``), and a row
    replayed with ``--book-seed`` (in ``results[REPLAY_FOLDER]``; the chap3
    row a replay belongs beside is its ``beside``) gets the replay's match in
    its note. Other chapters' rows are returned as they are."""
    if name != "chap3":
        return rows
    replays = {r.get("beside"): r for r in (results.get(REPLAY_FOLDER) or {}).get("rows", [])}
    shown = []
    for r in rows:
        replay = replays.get(r["id"])
        spread = book_code_spread_text(r["id"])
        if spread and isinstance(r.get("book"), (int, float)):
            r = dict(r, book=f"{r['book']:.2f}% ({spread})")
        if replay is not None and replay_summary(replay):
            r = dict(r, note=(r.get("note", "") + "; " if r.get("note") else "") + replay_summary(replay))
        shown.append(r)
    return shown
