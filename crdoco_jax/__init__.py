"""crdoco_jax: CrDoCo (CVPR 2019) pixel-level domain adaptation in JAX/Flax.

Importing this package has no side effects: no device allocation, no flag
parsing. Import submodules explicitly, e.g. ``from crdoco_jax import losses``.
"""
__version__ = "0.1.0"
