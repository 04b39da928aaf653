"""Only the optional C extensions live here; everything else is in setup.cfg.

``ipc._fastring`` holds C versions of the ring's hot paths, ``ipc.codec._fastdecode`` the
codec's remembered decodes. Both are optional: where they cannot be built (no compiler, no
Python headers) the install still succeeds and ``ipc.ring`` and ``ipc.codec`` run their
pure-Python code, which speaks the same bytes.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            "ipc._fastring",
            sources=["ipc/_fastring.c"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        Extension(
            "ipc.codec._fastdecode",
            sources=["ipc/codec/_fastdecode.c"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]
)
