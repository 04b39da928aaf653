"""Only the optional C extension lives here; everything else is in setup.cfg.

``ipc._fastring`` holds C versions of the ring's hot paths. It is optional: where it cannot be
built (no compiler, no Python headers) the install still succeeds and ``ipc.ring`` runs its
pure-Python code, which speaks the same byte layout.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipc._fastring",
            sources=["ipc/_fastring.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
