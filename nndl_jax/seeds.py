"""Seeds: the one check of a seed, and the one way a seed becomes JAX keys.

A results file records seeds, not keys, so everything that draws from a seed
(the nets' initial weights, their shuffles and dropout masks, the expanded
training set's shuffle) must take the same seeds and turn each into the same
keys whichever other seeds it is used beside. ``check_seed`` is that one
check: a whole number in [0, 2**32). ``jax.random.key`` reads only the low 32
bits of a larger seed without 64-bit mode, so 2**32 would silently train the
nets of seed 0; the same limit for the expansion keeps one rule for every seed.

NumPy only at import (layer 1: ``data`` uses it); JAX is imported by
``key`` and ``seed_keys`` when they are called.
"""
import numpy as np

SEED_LIMIT = 2 ** 32


def check_seed(seed, what="a seed"):
    """``seed`` as an int in [0, 2**32); anything else (a bool, 1.5, "3", -1,
    2**32) is a ValueError that starts with ``what``."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{what} must be a whole number from 0 to {SEED_LIMIT - 1} (2**32 - 1), got {seed!r}")
    return int(seed)


def key(seed):
    """The JAX key of one checked seed (``jax.random.key``): where every key made from a seed starts."""
    import jax
    return jax.random.key(check_seed(seed))


def seed_keys(seeds):
    """Named keys for runs with the given integer seeds: ``(init_keys, train_keys)``,
    each [K]. Seed s always gives the same pair (``split(key(s))``), so a net
    is the same whichever other seeds it trains beside, and the seed is all a
    results file needs to record to replay a run."""
    import jax
    import jax.numpy as jnp
    pairs = [jax.random.split(key(s)) for s in seeds]
    return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])
