"""JAX's persistent compilation cache, on for every process of the project.

Compiling an epoch takes seconds to minutes (a conv net on the CPU); a second
process or REPL session that trains the same network should load the program
the first compiled, not compile it again. ``use_compilation_cache`` turns the
cache on once per process, when the first trainer or initializer is made, in
``compilation_cache_dir()``: ``$NNDL_JAX_COMPILATION_CACHE`` (another folder,
or 0 / off to turn it off), else ``<user cache>/nndl-jax/xla``. The cache
holds compiled programs only, never numbers: an entry that cannot be read is
compiled again.
"""
import functools
import os
import sys

import jax

COMPILATION_CACHE_ENV = "NNDL_JAX_COMPILATION_CACHE"


def compilation_cache_dir():
    """Where JAX's persistent compilation cache is kept: ``$NNDL_JAX_COMPILATION_CACHE``
    (a folder; "0", "off" or "" turn the cache off: None), else
    ``<user cache>/nndl-jax/xla`` (the folder of the MNIST cache)."""
    value = os.environ.get(COMPILATION_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "no", "false") else value
    from nndl_jax.data import cache_dir
    return str(cache_dir() / "xla")


@functools.cache
def use_compilation_cache():
    """Turn on JAX's persistent compilation cache in ``compilation_cache_dir()``
    (once per process, when the first trainer is made), so a second process or
    REPL session loads the programs this one compiled instead of compiling them
    again. Left alone when the process has set its own cache folder."""
    folder = compilation_cache_dir()
    if folder is None or jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    _explain_cache_warnings(folder)
    return folder


def _explain_cache_warnings(folder):
    """JAX's warning about an entry of the cache it cannot read or write names
    neither the folder nor what to do: say both, once per process, in one line
    (the program is compiled afresh; the numbers do not change)."""
    import warnings
    previous, said = warnings.showwarning, []

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "persistent compilation cache" not in text:
            return previous(message, category, filename, lineno, file, line)
        if not said:
            said.append(text)
            print(f"nndl-jax: an entry of the compilation cache in {folder} is damaged or cannot be written "
                  f"({text[:200]}); the program is compiled afresh and the numbers do not "
                  f"change. Deleting the folder {folder} is safe: it only saves compiling time (set "
                  f"{COMPILATION_CACHE_ENV}=0 to turn the cache off).", file=sys.stderr, flush=True)
    warnings.showwarning = show
