"""Only the optional C extensions live here; everything else is in setup.cfg.

``ipc._fastring`` holds C versions of the ring's hot paths, ``ipc.codec._fastcodec`` the
codec's remembered plans (encode, ring pieces, decode; built against numpy's C API). Both are
optional: where they cannot be built (no compiler, no Python or numpy headers) the install
still succeeds and ``ipc.ring`` and ``ipc.codec`` run their pure-Python code, which speaks the
same bytes.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def _numpy_include() -> list[str]:
    try:
        import numpy
    except ImportError:  # no numpy where this builds: the codec extension is skipped
        return []
    return [numpy.get_include()]


_NUMPY = _numpy_include()

setup(
    ext_modules=[
        Extension(
            "ipc._fastring",
            sources=["ipc/_fastring.c"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        *([Extension(
            "ipc.codec._fastcodec",
            sources=["ipc/codec/_fastcodec.c"],
            include_dirs=_NUMPY,
            extra_compile_args=FLAGS,
            optional=True,
        )] if _NUMPY else []),
    ]
)
