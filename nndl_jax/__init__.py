"""nndl-jax: the programs of Nielsen's *Neural Networks and Deep Learning* in JAX.

Kept light on purpose: nothing heavy is imported here. Import the modules you
need, as the book does::

    from nndl_jax import mnist_loader, network
"""

__version__ = "0.1.0"
