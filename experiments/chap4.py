"""Chapter 4: a visual proof that neural nets can compute any function.

The chapter's construction, built by hand as params of the core's fully
connected network ``layers.mlp([1, 2N, 1], sigmoid)``:

- a hidden neuron with a large weight w = 1000 and bias b = −w·s is a step at
  x = s (row 4.1);
- two steps at s_j and s_{j+1} with output weights +h_j and −h_j make a bump
  of height h_j on [s_j, s_{j+1}];
- the output neuron is itself a sigmoid, so the weighted sum Σ_j h_j·bump_j(x)
  must approximate σ⁻¹(f(x)); the heights are h_j = σ⁻¹(f(m_j)) at the bump
  midpoints m_j, and the output bias is 0 (row 4.2). The chapter leaves the
  heights to the reader; the constant closest to σ⁻¹∘f on a bump in average
  absolute deviation is its median there (row 4.2m), which is what the
  widget's challenge rewards at N = 5.

The target is eq. (113), f(x) = 0.2 + 0.4x² + 0.3x·sin(15x) + 0.05·cos(50x)
on [0, 1]. The "average deviation" is the mean absolute deviation over a fine
grid of x in [0, 1], measured two ways: between the network's output σ(Σ) and
f, and between the weighted sum Σ and σ⁻¹∘f (the quantity the chapter's
widget plots while the reader adjusts the heights). The book's challenge is
≤ 0.40 with the widget's 5 bumps. The error falls as the number of bumps N
grows, until the bumps become as narrow as the steps themselves (≈ 10/w).

For comparison (row 4.3), the same f learned by gradient descent: [1, H, 1]
sigmoid nets, quadratic cost on the real-valued targets (the cost's sigmoid
output fits since f ∈ (0, 1)), mini-batch SGD with ``train.fit``, the seeds as
K stacked nets in one program.

    python -m experiments.chap4            # the full chapter
    python -m experiments.chap4 --quick    # CI: fewer bumps and epochs
"""

import numpy as np

from experiments import driver, progress, report, session

# JAX starts only when a row computes: the functions below import jax.numpy (and the
# parts of nndl_jax built on it) where they use it, so `--help` and the row table
# answer without it.

STEP_WEIGHT = 1000.0          # the chapter's "large" weight
GRID = 10_001                 # the fine grid of x in [0, 1] for the average deviation
BUMPS = (5, 10, 20, 50, 100, 200)
CHALLENGE = 0.40              # the book's target average deviation

# The chapter's rows: what each measures, its settings, the book's number
# ("direction": which way a measured deviation is better).
ROWS = [
    dict(id="4.1", experiment="step neuron w=1000, s=0.2: max |a - step| off s±0.01",
         settings=dict(w=STEP_WEIGHT, s=0.2), book=None),
    dict(id="4.2", experiment="avg |σ(Σ) - f|, midpoint heights",
         settings=dict(bumps=BUMPS, w=STEP_WEIGHT, heights="midpoint"), book=CHALLENGE),
    dict(id="4.2w", experiment="avg |Σ - σ⁻¹f| (widget), midpoint heights",
         settings=dict(bumps=BUMPS, w=STEP_WEIGHT, heights="midpoint"), book=CHALLENGE),
    dict(id="4.2m", experiment="avg |Σ - σ⁻¹f| (widget), median heights",
         settings=dict(bumps=BUMPS, w=STEP_WEIGHT, heights="median"), book=CHALLENGE),
    dict(id="4.3", experiment="SGD [1,H,1], quadratic cost: avg |a - f|",
         settings=dict(hidden=10, eta=4.0, mini_batch_size=10, epochs=1000, n_train=1000), book=None),
]
ROW = {r["id"]: r for r in ROWS}
QUICK_SGD = dict(epochs=5, n_train=200)


# --- the chapter's function and its construction --------------------------------

def f(x):
    """The chapter's wiggly target, eq. (113)."""
    import jax.numpy as jnp

    return 0.2 + 0.4 * x ** 2 + 0.3 * x * jnp.sin(15 * x) + 0.05 * jnp.cos(50 * x)


def inverse_sigmoid(a):
    """σ⁻¹(a) = ln(a / (1 − a)), for a in (0, 1)."""
    import jax.numpy as jnp

    return jnp.log(a) - jnp.log1p(-a)


def step_neuron(s, w=STEP_WEIGHT):
    """A hidden neuron's (w, b) for a step at x = s: b = −w·s (so s = −b/w)."""
    return w, -w * s


def bump_params(heights, edges, w=STEP_WEIGHT):
    """Params of the [1, 2N, 1] network whose weighted output is
    Σ_j h_j (σ(w(x − s_j)) − σ(w(x − s_{j+1}))): bump j is the pair of step
    neurons 2j (at s_j, output weight +h_j) and 2j+1 (at s_{j+1}, −h_j).
    The output bias is 0. The layout is ``layers.mlp``'s ([{"w","b"}, ...])."""
    import jax.numpy as jnp

    heights = jnp.asarray(heights, jnp.float32)
    edges = jnp.asarray(edges, jnp.float32)
    if edges.ndim != 1 or heights.shape != (edges.shape[0] - 1,):
        raise ValueError(f"need N heights and N + 1 edges, got {heights.shape} and {edges.shape}")
    steps = jnp.stack([edges[:-1], edges[1:]], axis=1).reshape(-1)       # s_0, s_1, s_1, s_2, ...
    signs = jnp.tile(jnp.asarray([1.0, -1.0], jnp.float32), heights.shape[0])
    ws, bs = step_neuron(steps, w)
    hidden = {"w": jnp.broadcast_to(jnp.float32(ws), steps.shape)[None, :], "b": bs}
    output = {"w": (jnp.repeat(heights, 2) * signs)[:, None], "b": jnp.zeros((1,), jnp.float32)}
    return [hidden, output]


def grid(n=GRID):
    """The fine grid of x in [0, 1], as a batch [n, 1]."""
    import jax.numpy as jnp

    return jnp.linspace(0.0, 1.0, n, dtype=jnp.float32)[:, None]


def bump_heights(edges, rule="midpoint"):
    """The heights h_j that the weighted sum needs on each bump [s_j, s_{j+1}]:
    "midpoint": σ⁻¹(f(m_j)) at the midpoint (the chapter's recipe);
    "median": the median of σ⁻¹∘f over the bump (on the fine grid), the
    constant closest to σ⁻¹∘f in average absolute deviation."""
    import jax.numpy as jnp

    edges = jnp.asarray(edges, jnp.float32)
    if rule == "midpoint":
        return inverse_sigmoid(f((edges[:-1] + edges[1:]) / 2))
    if rule == "median":
        x = np.asarray(grid())[:, 0]
        g = np.asarray(inverse_sigmoid(f(x)))
        e = np.asarray(edges)
        return jnp.asarray([np.median(g[(x >= lo) & (x <= hi)]) for lo, hi in zip(e[:-1], e[1:])],
                           jnp.float32)
    raise ValueError(f"unknown height rule {rule!r}; choose 'midpoint' or 'median'")


def universality_net(n_bumps, w=STEP_WEIGHT, heights="midpoint"):
    """The chapter's construction with N equal bumps on [0, 1] and heights from
    ``bump_heights``. Returns (params, apply)."""
    import jax.numpy as jnp

    from nndl_jax import layers
    from nndl_jax.activations import sigmoid

    if int(n_bumps) < 1:
        raise ValueError(f"need at least one bump, got {n_bumps}")
    edges = jnp.linspace(0.0, 1.0, int(n_bumps) + 1)
    _, apply = layers.mlp([1, 2 * int(n_bumps), 1], sigmoid)
    return bump_params(bump_heights(edges, heights), edges, w), apply


def average_deviations(params, apply, x=None):
    """(mean |σ(Σ) − f|, mean |Σ − σ⁻¹∘f|) over the grid: the output's and the
    weighted sum's average deviation."""
    import jax.numpy as jnp

    from nndl_jax.activations import sigmoid

    x = grid() if x is None else x
    z = apply(params, x)
    return (float(jnp.mean(jnp.abs(sigmoid(z) - f(x)))),
            float(jnp.mean(jnp.abs(z - inverse_sigmoid(f(x))))))


# --- gradient descent for comparison -----------------------------------------------

def learned(args, hidden, eta, mini_batch_size, epochs, n_train):
    """K = --seeds nets [1, hidden, 1] trained by SGD on the quadratic cost with
    targets f(x) at n_train uniform points; returns (average deviation [K],
    the nets' outputs on the grid [K, GRID])."""
    import jax.numpy as jnp

    from nndl_jax import costs, layers, train
    from nndl_jax.activations import sigmoid

    init, apply = layers.mlp([1, hidden, 1], sigmoid, init=layers.default_weight_init)
    init_keys, train_keys = train.seed_keys(driver.seeds(args))
    params = train.init_many(init, init_keys, (1,))
    x = jnp.linspace(0.0, 1.0, n_train, dtype=jnp.float32)[:, None]
    trainer = train.Trainer(apply, costs.quadratic, mini_batch_size)
    on_epoch = progress.progress(f"4.3: [1,{hidden},1]", epochs, lambda record: "", every=max(1, epochs // 5),
                               log=progress.metrics_log(args, "4.3"))
    params, _, _ = train.fit(trainer, params, (x, f(x)), epochs, key=train_keys, eta=eta,
                             on_epoch=on_epoch)
    a = sigmoid(trainer.predict(params, grid()))[..., 0]                    # [K, GRID]
    deviation = jnp.mean(jnp.abs(a - f(grid())[:, 0][None, :]), axis=1)
    return np.asarray(deviation), np.asarray(a)


# --- figures ---------------------------------------------------------------------------

def _plot_approximations(args, curves, gd):
    fig, path = report.figure(args, "universality_approximation")
    if fig is None:
        return
    ax_out, ax_sum = fig.subplots(1, 2)
    x = np.asarray(grid())[:, 0]
    ax_out.plot(x, np.asarray(f(x)), "k", lw=2, label="f(x)")
    ax_sum.plot(x, np.asarray(inverse_sigmoid(f(x))), "k", lw=2, label="σ⁻¹(f(x))")
    for n, (a, z) in curves.items():
        ax_out.plot(x, a, lw=1, label=f"{n} bumps")
        ax_sum.plot(x, z, lw=1, label=f"{n} bumps")
    if gd is not None:
        ax_out.plot(x, gd[0], "--", lw=1, label=f"SGD [1,{ROW['4.3']['settings']['hidden']},1], seed {args.seed}")
    ax_out.set(xlabel="x", title="network output σ(Σ)")
    ax_sum.set(xlabel="x", title="weighted sum Σ (output bias 0)")
    ax_out.legend(fontsize=7)
    ax_sum.legend(fontsize=7)
    report.save(fig, path)


def _plot_error(args, errors, gd_dev):
    fig, path = report.figure(args, "universality_error")
    if fig is None:
        return
    ax = fig.gca()
    n = np.array(sorted(errors))
    ax.loglog(n, [errors[k][0] for k in n], "o-", label="avg |σ(Σ) − f|")
    ax.loglog(n, [errors[k][1] for k in n], "s-", label="avg |Σ − σ⁻¹(f)| (widget)")
    ax.loglog(n, [errors[k][2] for k in n], "^:", label="avg |Σ − σ⁻¹(f)|, median heights")
    ax.axhline(CHALLENGE, color="gray", ls=":", label="book's challenge 0.40")
    if gd_dev is not None:
        ax.axhspan(gd_dev.min(), gd_dev.max(), color="C3", alpha=0.3,
                   label=f"SGD [1,{ROW['4.3']['settings']['hidden']},1] (min–max over seeds)")
    ax.set(xlabel="number of bumps N (2N hidden neurons)", ylabel="average deviation",
           title=f"Bump construction, step weight w = {STEP_WEIGHT:g}")
    ax.legend(fontsize=8)
    report.save(fig, path)


# --- the rows -------------------------------------------------------------------------

def step_row(args):
    """4.1: how far the step neuron's activation is from a true step, off s ± 0.01."""
    import jax.numpy as jnp

    from nndl_jax.activations import sigmoid

    hp = ROW["4.1"]["settings"]
    x = grid()
    w, b = step_neuron(hp["s"], hp["w"])
    a = sigmoid(w * x[:, 0] + b)
    far = jnp.abs(x[:, 0] - hp["s"]) > 0.01
    ideal = (x[:, 0] > hp["s"]).astype(jnp.float32)
    return [report.row("4.1", ROW["4.1"]["experiment"], None,
                       float(jnp.max(jnp.where(far, jnp.abs(a - ideal), 0.0))), unit="", direction="lower", b=b)]


def bumps_for(args):
    return BUMPS[:3] if args.quick else BUMPS


def bump_rows(args, figures):
    """4.2, 4.2w, 4.2m: the construction's average deviations for each number of bumps."""
    from nndl_jax.activations import sigmoid

    errors, curves = {}, {}
    for n in bumps_for(args):
        params, apply = universality_net(n)
        errors[n] = average_deviations(params, apply)
        median_params, _ = universality_net(n, heights="median")
        errors[n] += (average_deviations(median_params, apply)[1],)
        if n in (5, 20, 100):
            z = apply(params, grid())[:, 0]
            curves[n] = (np.asarray(sigmoid(z)), np.asarray(z))
    figures.update(errors=errors, curves=curves)
    bumps = {str(n): {"output_deviation": e[0], "weighted_sum_deviation": e[1],
                      "weighted_sum_deviation_median_heights": e[2]} for n, e in errors.items()}
    rows = [report.row(f"{row_id}.{n}", f"{ROW[row_id]['experiment']}, N={n}",
                       ROW[row_id]["book"] if n == 5 else None, errors[n][which], unit="", direction="lower",
                       note="" if n != 5 else
                       f"book's challenge (<= 0.40, 5 bumps) met: {errors[n][which] <= CHALLENGE}")
            for which, row_id in enumerate(("4.2", "4.2w", "4.2m")) for n in errors]
    return rows, {"bumps": bumps}


def sgd_settings(args):
    return dict(ROW["4.3"]["settings"], **(QUICK_SGD if args.quick else {}))


def sgd_units(args, figures):
    """4.3: the same f learned by gradient descent, for comparison: the seeds
    the driver gives trained as one program, one unit record a seed (its
    deviation and its outputs on the grid), composed by ``compose``."""
    hp = sgd_settings(args)
    deviation, outputs = learned(args, **hp)
    return [dict(row="4.3", seed=s, deviation=deviation[k].item(), outputs=outputs[k].tolist())
            for k, s in enumerate(driver.seeds(args))], {}


def compose(units, results=None, figures=None):
    """Row 4.3 from its seeds' unit records ({"4.3": [a record a seed]}),
    wherever each was trained; ``figures`` gets what the plots draw."""
    records = units["4.3"]
    hp = records[0]["hyperparameters"]
    deviation = np.asarray([u["deviation"] for u in records], dtype=np.float32)
    if figures is not None:
        figures.update(gd_deviation=deviation, gd_outputs=np.asarray([u["outputs"] for u in records], np.float32))
    row = report.row("4.3", ROW["4.3"]["experiment"], None, deviation, unit="", direction="lower",
                     note=f"H={hp['hidden']}, eta {hp['eta']}, mb {hp['mini_batch_size']}, "
                          f"{hp['epochs']} epochs on {hp['n_train']} points", hyperparameters=hp)
    return [row], {"gradient_descent": dict(hp, deviation=deviation.tolist())}


def jobs(args, figures):
    """The rows asked for, as the driver's jobs; ``figures`` collects what the plots draw."""
    out = []
    if driver.wanted(args, "4.1"):
        out.append(driver.Job("4.1", ["4.1"], step_row))
    if any(driver.wanted(args, r) for r in ("4.2", "4.2w", "4.2m")):
        ids = [f"{r}.{n}" for r in ("4.2", "4.2w", "4.2m") for n in bumps_for(args)]
        out.append(driver.Job("4.2", ids, lambda a: bump_rows(a, figures)))
    if driver.wanted(args, "4.3"):
        out.append(driver.Job("4.3", ["4.3"], lambda a: sgd_units(a, figures),
                              settings={"hyperparameters": sgd_settings(args)},
                              compose=lambda units, results: compose(units, results, figures)))
    return driver.asked_jobs(args, out)


def planned_jobs(args):
    """The jobs asked for, listed without data (for ``--part`` and ``--plan``)."""
    return jobs(args, {})


def run(args):
    progress.say_start(args, loading=None)
    figures = {}
    rows = driver.run_jobs(args, jobs(args, figures))
    if "errors" in figures:
        _plot_approximations(args, figures["curves"], figures.get("gd_outputs"))
        _plot_error(args, figures["errors"], figures.get("gd_deviation"))
    return rows


def command_line(argv=None, **how):
    """The chapter's command line parsed (``driver.parse_args``); ``how``:
    ``plan_only`` (for the planner: parsed, nothing started), ``book_plan``, ``run_session``."""
    return driver.parse_args("chap4", __doc__, argv, row_ids={r["id"]: r["experiment"] for r in ROWS}, **how)


def main(argv=None, book_plan=None, run_session=None):
    args = command_line(argv, book_plan=book_plan, run_session=run_session)
    return driver.finish(args, run(args), step_weight=STEP_WEIGHT, grid_points=GRID)


if __name__ == "__main__":
    raise SystemExit(session.main_entry(main))
