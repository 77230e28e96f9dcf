"""Issue 32 item 2: several processes (parts of a plan) on one accelerator.
``devices.share_device(N)`` turns JAX's memory preallocation off and caps each
process at 0.9/N of the device's memory, before JAX starts; ``--share-device N``
applies it from a chapter's command line. JAX reads the settings when its
backend starts, so they are checked in fresh processes."""
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from nndl_jax import devices

REPO = Path(__file__).resolve().parents[1]


def fresh_python(code, *argv):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_PYTHON_CLIENT_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_share_device_sets_both_settings_and_keeps_the_users_own():
    code = ("from nndl_jax import devices\n"
            "mine = {'XLA_PYTHON_CLIENT_MEM_FRACTION': '.5'}\n"
            "print(devices.share_device(4, {}), devices.share_device(4, mine))")
    assert fresh_python(code) == ("{'XLA_PYTHON_CLIENT_PREALLOCATE': 'false', 'XLA_PYTHON_CLIENT_MEM_FRACTION': "
                                  "'0.225'} {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false', "
                                  "'XLA_PYTHON_CLIENT_MEM_FRACTION': '.5'}")


def test_the_share_device_option_sets_them_before_jax_starts(tmp_path):
    code = ("import os, sys\n"
            "from experiments import driver\n"
            "driver.parse_args('chap1', 'x', ['--share-device', '3', '--out', sys.argv[1]], row_ids=['1.1'])\n"
            "import jax\n"
            "jax.numpy.zeros(1).block_until_ready()\n"
            "print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'], os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'])")
    assert fresh_python(code, str(tmp_path / "out")) == "false 0.300"


def test_share_device_refuses_once_jax_has_started_and_a_count_below_one():
    jnp.zeros(1).block_until_ready()   # this process's backend runs
    with pytest.raises(RuntimeError, match="before JAX starts"):
        devices.share_device(2, {})
    with pytest.raises(ValueError, match="at least one"):
        devices.share_device(0, {})
